"""The any-speed table of the k-hop study (eval/khop_any_speed.py) on result files written here: each row held
against the model the issue names, `within` by its criterion, the training cost against one dedicated model."""

import json

import pytest

from eval import khop_any_speed


def point(solve, nfe, loss, accuracy, kind="solve"):
    return {"label": solve, "kind": kind, "solves": [solve], "layers": None, "nfe": nfe, "loss": loss,
            "groups": {h: {"accuracy": accuracy, "loss": loss, "weight": 100.0} for h in ("1", "2", "3", "4")}}


def write(results, name, points, steps=2000, nfe_per_step=4.0, any_speed=None):
    path = results / "khop" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "step": steps, "training": {"nfe_per_step": nfe_per_step}, "points": points}
    if any_speed is not None:
        record["any_speed"] = any_speed
    path.write_text(json.dumps(record))


def test_rows_are_held_against_the_ladder_the_model_itself_and_full_depth(tmp_path):
    for depth, loss in ((1, 0.9), (2, 0.6), (3, 0.3), (4, 0.1)):
        name = f"depth{depth}" if depth <= 2 else f"depth{depth}_curriculum"
        write(tmp_path, name, [point(f"euler:{depth}", depth, loss, 0.9, kind="full depth")], nfe_per_step=depth)
    by_hops = {h: {"nfe": nfe, "loss": 0.2, "accuracy": 0.85, "weight": 100.0} for h, nfe in (("1", 5), ("2", 6),
                                                                                              ("3", 7), ("4", 8))}
    fixed = [point("euler:1", 1, 0.905, 0.895), point("euler:2", 2, 0.7, 0.9), point("euler:4", 4, 0.1, 0.9),
             point("euler:8", 8, 0.105, 0.9), point("midpoint:1", 2, 0.65, 0.9)]
    write(tmp_path, "depth4_curriculum_draw_stride", [], nfe_per_step=5.0,
          any_speed={"points": fixed, "adaptive": [{"solve": "bosh3:rtol=0.1:atol=0.1", "by_hops": by_hops}]})
    rows = {r["solve"]: r for r in khop_any_speed.rows(str(tmp_path), ("depth4_curriculum_draw_stride",))}
    assert {"model", "depth", "seeds", "solve", "order", "nfe", "loss", "hops", "dedicated_loss", "within",
            "training_cost"} <= set(rows["euler:1"])
    assert rows["euler:1"]["dedicated"] == "depth1" and rows["euler:1"]["within"]  # 0.005 nats, 0.5 points
    assert rows["euler:2"]["dedicated"] == "depth2" and not rows["euler:2"]["within"]
    assert rows["euler:2"]["loss_excess"] == pytest.approx(0.7 - 0.6 - 0.01)
    assert rows["midpoint:1"]["dedicated"] == "depth2" and rows["midpoint:1"]["order"] == 2
    assert rows["euler:8"]["dedicated"] == "depth4_curriculum_draw_stride at euler:4" and rows["euler:8"]["within"]
    adaptive = rows["bosh3:rtol=0.1:atol=0.1"]
    assert adaptive["dedicated"] == "depth4_curriculum" and adaptive["nfe"] == pytest.approx(6.5)
    assert adaptive["nfe_by_hops"] == {"1": 5, "2": 6, "3": 7, "4": 8} and not adaptive["within"]
    assert rows["euler:4"]["training_cost"] == pytest.approx(2000 * 5.0 / (2000 * 4.0))
    goals = khop_any_speed.goals(list(rows.values()))
    assert "within the dedicated depth-N model: 2 of 4; missed at N = 2" in goals
    assert "order >= 2 better than Euler at equal NFE <= 2: met" in goals
    assert "training cost at most 1.5 dedicated full-depth models: met (1.25)" in goals


def test_adaptive_rows_pair_seeds_by_solve_not_by_position(tmp_path):
    write(tmp_path, "depth4_curriculum", [point("euler:4", 4, 0.1, 0.9, kind="full depth")])

    def adaptive(solve, nfe, loss):
        return {"solve": solve, "by_hops": {h: {"nfe": nfe, "loss": loss, "accuracy": 0.5, "weight": 1.0}
                                            for h in ("1", "2", "3", "4")}}

    loose, tight = "bosh3:rtol=0.1:atol=0.1", "bosh3:rtol=0.01:atol=0.01"
    write(tmp_path, "depth4_curriculum_draw_stride", [],
          any_speed={"points": [], "adaptive": [adaptive(loose, 10, 0.5), adaptive(tight, 30, 2.0)]})
    write(tmp_path, "depth4_curriculum_draw_stride_seed1", [],
          any_speed={"points": [], "adaptive": [adaptive(tight, 34, 2.4), adaptive(loose, 12, 0.7)]})
    write(tmp_path, "depth4_curriculum_draw_stride_seed2", [],
          any_speed={"points": [], "adaptive": [adaptive(tight, 32, 2.2)]})
    rows = {r["solve"]: r for r in khop_any_speed.rows(str(tmp_path), ("depth4_curriculum_draw_stride",))}
    assert rows[loose]["seeds"] == [0, 1] and rows[loose]["nfe"] == pytest.approx(11)
    assert rows[loose]["loss"] == pytest.approx(0.6)
    assert rows[tight]["seeds"] == [0, 1, 2] and rows[tight]["nfe"] == pytest.approx(32)
    assert rows[tight]["loss"] == pytest.approx(2.2) and rows[tight]["nfe_by_hops"]["3"] == pytest.approx(32)
