"""One run per workdir: a lock file that names its holder.

A second run on a busy workdir would replace the first one's checkpoints and
interleave its metrics, so a run takes `WORKDIR/lock.json` (host, pid, start,
heartbeat) before it reads or writes anything there, and gives it back when it
stops, SIGTERM and Ctrl-C included. The lock is created whole and exclusively
(a hard link, refused where the lock exists), so of two runs starting at the
same instant one gets it. A lock left by a run
that died is stale: on the same host when its process is gone, on another host
(a pod restarted elsewhere) when its heartbeat, refreshed at every logging
window, is older than `stale_after`; it is taken over by moving it aside, which
one taker alone can do, and a taker that finds it moved a lock other than the
stale one it judged (another taker's, made meanwhile) puts it back. A lock
given back while it is being read is looked at again, never taken over. Only
process 0 of a multi-process run holds it.

On a remote workdir (`gs://`) the file system offers no exclusive create
through `etils.epath`: the lock is written and read back, which catches a
second run that starts later but not one that starts in the same instant.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from odeplm.core.errors import OdeplmError
from odeplm.runs.paths import run_path

log = logging.getLogger("odeplm")


class WorkdirBusy(OdeplmError):
    """Another live run holds the workdir (a usage error: the command names one workdir per run)."""


class WorkdirLock:
    def __init__(self, workdir: str, *, stale_after: float = 900.0):
        self.path = run_path(workdir) / "lock.json"
        self.local = "://" not in os.fspath(self.path)
        self.stale_after = stale_after
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}

    def acquire(self):
        """Takes the lock, or raises WorkdirBusy naming the live holder."""
        while not self._create():
            try:
                holder = self._holder()
            except FileNotFoundError:
                continue  # given back since the create was refused: another run may be creating it now
            if holder is not None and self._is_mine(holder):
                break
            if holder is not None and not self._stale(holder):
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
                raise WorkdirBusy(f"{self.path.parent} is in use by pid {holder.get('pid')} on "
                                  f"{holder.get('host')} since {since} ({self.path}); stop that run or give this one "
                                  f"another --workdir")
            aside = self.path.parent / f"lock.json.stale-{self.mine['pid']}"
            try:
                self.path.rename(aside)  # of several takers, one moves it; the others find it gone
            except FileNotFoundError:
                continue
            if self.local and self._moved_a_live_lock(aside, holder):
                continue
            aside.unlink()
            if holder is not None:
                log.warning("took over the stale lock of pid %s on %s (%s)", holder.get("pid"), holder.get("host"),
                            self.path)
        self.refresh()

    def _moved_a_live_lock(self, aside, judged: dict | None) -> bool:
        """Whether the lock moved aside is not the stale one judged (another taker replaced that one
        meanwhile); if so, it is put back where its holder left it."""
        try:
            moved = json.loads(aside.read_text())
        except ValueError:
            moved = None
        if moved == judged:
            return False
        try:
            os.link(aside, self.path)
        except FileExistsError:
            pass  # a third run made a lock meanwhile: this one names it next
        finally:
            aside.unlink()
        return True

    def _create(self) -> bool:
        """Creates the lock file holding this run, unless one exists."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**self.mine, "heartbeat": time.time()})
        if not self.local:
            if self.path.exists():
                return False
            self.path.write_text(text)
            return self._is_mine(self._holder() or {})
        temporary = self.path.parent / f"lock.json.{self.mine['pid']}.new"
        temporary.write_text(text)
        try:
            os.link(temporary, self.path)  # atomic, whole, and refused where the lock exists
        except FileExistsError:
            return False
        finally:
            temporary.unlink()
        return True

    def refresh(self):
        """Rewrites the heartbeat (written whole, then renamed, so readers never see half a file)."""
        temporary = self.path.parent / f"lock.json.{self.mine['pid']}.tmp"
        temporary.write_text(json.dumps({**self.mine, "heartbeat": time.time()}))
        temporary.replace(self.path)

    def release(self):
        try:
            holder = self._holder()
        except FileNotFoundError:
            return
        if holder is not None and self._is_mine(holder):
            self.path.unlink()

    def _holder(self) -> dict | None:
        """The holder the lock names; None where it cannot be read (treated as stale); raises
        FileNotFoundError where there is no lock."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            raise
        except (OSError, ValueError):
            return None

    def _is_mine(self, holder: dict) -> bool:
        return holder.get("host") == self.mine["host"] and holder.get("pid") == self.mine["pid"]

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") == self.mine["host"]:
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, KeyError, TypeError, ValueError):
                return False  # alive under another user, or unreadable: do not take it
            return False
        return time.time() - float(holder.get("heartbeat", 0)) > self.stale_after
