"""One run per workdir: a live holder is named and refused, a dead one's lock is taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from odeplm.runs.lock import WorkdirBusy, WorkdirLock


def _write_lock(workdir, **holder):
    values = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "heartbeat": time.time()}
    values.update(holder)
    (workdir / "lock.json").write_text(json.dumps(values))


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_live_holder_is_refused_and_a_dead_one_taken_over(tmp_path):
    _write_lock(tmp_path, pid=os.getppid())  # a live process on this host: the one that started pytest
    with pytest.raises(WorkdirBusy, match=f"in use by pid {os.getppid()} on {socket.gethostname()} since .*lock.json"):
        WorkdirLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getppid()  # left as it was

    _write_lock(tmp_path, pid=_dead_pid())  # its process is gone: stale
    lock = WorkdirLock(str(tmp_path))
    lock.acquire()
    assert json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "lock.json").exists()


def test_a_lock_from_another_host_is_stale_only_when_its_heartbeat_is_old(tmp_path):
    _write_lock(tmp_path, host="pod-worker-7", pid=1, heartbeat=time.time() - 60)
    with pytest.raises(WorkdirBusy, match="in use by pid 1 on pod-worker-7"):
        WorkdirLock(str(tmp_path), stale_after=600).acquire()
    _write_lock(tmp_path, host="pod-worker-7", pid=1, heartbeat=time.time() - 3600)
    WorkdirLock(str(tmp_path), stale_after=600).acquire()
    assert json.loads((tmp_path / "lock.json").read_text())["host"] == socket.gethostname()


def test_release_leaves_another_holders_lock_alone(tmp_path):
    lock = WorkdirLock(str(tmp_path))
    lock.acquire()
    _write_lock(tmp_path, host="elsewhere", pid=42)  # taken over by another run meanwhile
    lock.release()
    assert json.loads((tmp_path / "lock.json").read_text())["host"] == "elsewhere"


def test_a_lock_that_changes_hands_while_it_is_read_is_left_to_its_new_holder(tmp_path):
    """Its holder gives it back between a refused create and the read of the holder, and another live
    run takes it: that run is named, not taken over."""
    class RacedWhileReading(WorkdirLock):
        raced = False

        def _holder(self):
            if self.raced:
                return super()._holder()
            self.raced = True
            (tmp_path / "lock.json").unlink()  # given back ...
            try:
                return super()._holder()
            finally:
                _write_lock(tmp_path, pid=os.getppid())  # ... and taken by a live run

    _write_lock(tmp_path, pid=os.getppid())
    with pytest.raises(WorkdirBusy, match=f"in use by pid {os.getppid()}"):
        RacedWhileReading(str(tmp_path)).acquire()
    assert json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getppid()


def test_a_stale_lock_taken_over_by_another_run_first_is_put_back(tmp_path):
    """A stale lock is judged, then another run takes it over before this one moves it aside:
    the lock moved is that run's, so it goes back and that run is named."""
    class OvertakenWhileJudging(WorkdirLock):
        def _stale(self, holder):
            stale = super()._stale(holder)
            if stale:
                _write_lock(tmp_path, pid=os.getppid())  # the other taker's new lock
            return stale

    _write_lock(tmp_path, pid=_dead_pid())
    with pytest.raises(WorkdirBusy, match=f"in use by pid {os.getppid()}"):
        OvertakenWhileJudging(str(tmp_path)).acquire()
    assert json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getppid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock.json"]


def test_runs_contending_for_the_lock_never_hold_it_together(tmp_path):
    """Six processes take and give back the lock as fast as they can; a shared log of who
    holds it shows no two holders at once (a check-then-write lock lets two in)."""
    log = tmp_path / "holders.log"
    script = (f"import os\nfrom odeplm.runs.lock import WorkdirBusy, WorkdirLock\n"
              f"for _ in range(150):\n"
              f"    lock = WorkdirLock({str(tmp_path / 'run')!r})\n"
              f"    try:\n        lock.acquire()\n    except WorkdirBusy:\n        continue\n"
              f"    with open({str(log)!r}, 'a') as f: f.write(f'+{{os.getpid()}}\\n')\n"
              f"    with open({str(log)!r}, 'a') as f: f.write(f'-{{os.getpid()}}\\n')\n"
              f"    lock.release()\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = [subprocess.Popen([sys.executable, "-c", script], cwd=root, env=dict(os.environ, PYTHONPATH=root))
            for _ in range(6)]
    assert all(run.wait(timeout=300) == 0 for run in runs)
    entries = log.read_text().split()
    assert len(entries) >= 20
    holders = entries[0::2]
    assert all(h[0] == "+" for h in holders) and [e[1:] for e in entries[1::2]] == [h[1:] for h in holders]
