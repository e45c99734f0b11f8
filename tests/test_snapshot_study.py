"""tools/snapshot_study.py: a study's finished runs' records (never weights) and a report built from them alone."""

import importlib.util
import json
import os

import pytest

from keras_tl.study import runner
from test_study_runner import make_plan  # tests/ is on sys.path (pytest's rootdir-relative import)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    spec = importlib.util.spec_from_file_location("snapshot_study", os.path.join(ROOT, "tools", "snapshot_study.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_run(recipe, run_dir):
    """A finished run with records beside weights, an export and the child's log."""
    os.makedirs(os.path.join(run_dir, "export"), exist_ok=True)
    for name in ("recipe.yaml", "run.json", "state.json", "log_0_head.csv", "confusion_test.json", "run.log",
                 "best.weights.h5", "export/model.keras"):
        with open(os.path.join(run_dir, name), "w") as f:
            f.write("{}" if name.endswith(".json") else "x")
    acc = 0.5 + 0.1 * recipe.seed
    return {"test": {"accuracy": acc, "loss": 1.0}, "val": {"accuracy": acc}, "history": {}, "images_seen": 10,
            "wall_time": 0.1, "seed": recipe.seed}


def test_snapshot_copies_records_only_and_reports_from_them(tmp_path):
    plan = make_plan(tmp_path, "freeze: [head_only, all]\nseeds: 3\n")
    wd, out = str(tmp_path / "wd"), str(tmp_path / "out")
    runner.run_plan(plan, wd, run_fn=fake_run, runs=plan.runs[:4], log=lambda s: None)  # a study half-way
    res = _tool().snapshot(plan, wd, out)
    assert res == {"runs_done": 4, "runs_total": 6, "out": out}
    names = {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs}
    assert {"report.md", "study.json", "records/plan.json"} <= names and not any(n.endswith(".html") for n in names)
    kept = {os.path.basename(n) for n in names if n.startswith("records/runs/")}
    assert kept == {"DONE", "metrics.json", "recipe.yaml", "run.json", "state.json", "log_0_head.csv", "confusion_test.json"}
    assert not any(n.endswith((".h5", ".keras", "run.log")) for n in names)
    assert json.load(open(os.path.join(out, "study.json")))["runs_done"] == 4
    assert "PARTIAL RESULTS (4 of 6 runs finished)" in open(os.path.join(out, "report.md")).read()
    assert os.path.isdir(os.path.join(out, "plots")) and not os.path.exists(os.path.join(out, "records", "plots"))
    # The records restore a workdir: --resume there sees the finished runs.
    assert sorted(runner.collect(plan, os.path.join(out, "records"))) == sorted(r.key for r in plan.runs[:4])
    assert _tool().snapshot(plan, wd, out)["runs_done"] == 4  # again: replaces, does not nest
    # Another plan's recipe is refused, and the snapshot already there survives the refusal.
    from keras_tl.errors import WorkdirError

    other = make_plan(tmp_path, "freeze: [head_only, all]\nseeds: 2\n")
    with pytest.raises(WorkdirError):
        _tool().snapshot(other, wd, out)
    assert json.load(open(os.path.join(out, "study.json")))["runs_done"] == 4
    assert sorted(os.listdir(out)) == ["plots", "records", "report.md", "study.json"]
