"""A real study (``python -m keras_tl.study``, real training runs) killed mid-way and resumed,
and two shard processes sharing one study directory: every run finishes exactly once.

The study is 2 arms (last phase trains the head only | every layer) x 2 seeds, one epoch of a
cut MobileNetV3-Small on 60 synthetic 32 px galaxies. "Executed once" is read from each run's
own records: its CSV log holds one row per epoch (a rerun of a finished epoch adds a row) and
its claim names the worker that ran it.
"""

import csv
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

# Arm ids are <values>-<hash of the arm's recipe>; tests/test_study_plan.py pins the scheme.
ARMS = ("head_only-69134b1b", "all-fe013619")
RUNS = {f"{arm}/seed{k}" for arm in ARMS for k in range(2)}


@pytest.fixture
def recipe(tmp_path, tiny):
    """tests/conftest.py's tiny recipe as a study: 60 images, one head-only epoch, 2 arms x 2 seeds."""
    raw = tiny()
    raw.update(name="tiny_study", seed=0)
    raw["data"]["synthetic"] = {"count": 60, "seed": 7}
    del raw["model"]["head"]
    raw["train"] = {"tensorboard": False, "phases": [{"name": "p", "trainable": "head", "epochs": 1, "lr": 1e-3}]}
    raw["export"] = {"savedmodel": False}
    raw["study"] = {"freeze": ["head_only", "all"], "seeds": 2, "baseline": {"freeze": "head_only"}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _cmd(recipe, wd, *args):
    return [sys.executable, "-m", "keras_tl.study", "--recipe", recipe, "--workdir", wd, *args]


def _env(fault=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERAS_TL_FAULT", None)
    if fault:
        env["KERAS_TL_FAULT"] = fault
    return env


def _run_keys(wd):
    """Keys (arm/seedK) of the run dirs holding DONE."""
    return {os.path.relpath(os.path.dirname(p), os.path.join(wd, "runs")) for p in glob.glob(os.path.join(wd, "runs", "*", "*", "DONE"))}


def _epoch_rows(run_dir):
    """Epoch numbers logged by every phase of a run (a redone epoch appears twice)."""
    rows = []
    for log in sorted(glob.glob(os.path.join(run_dir, "log_*.csv"))):
        with open(log, newline="") as f:
            rows += [(os.path.basename(log), r["epoch"]) for r in csv.DictReader(f)]
    return rows


def _check_each_run_once(wd):
    assert _run_keys(wd) == RUNS
    for key in RUNS:
        d = os.path.join(wd, "runs", key)
        rows = _epoch_rows(d)
        assert len(rows) == len(set(rows)) == 1, (key, rows)
        assert json.load(open(os.path.join(d, "metrics.json")))["history"]["loss"]


def _arm_ids(wd):
    return {a["id"] for a in json.load(open(os.path.join(wd, "plan.json")))["arms"]}


def test_killed_study_resumes_without_rerunning_or_losing_runs(tmp_path, recipe):
    wd = str(tmp_path / "study")
    # Dies as the first run is about to write DONE: trained, exported, recorded.
    first = subprocess.run(_cmd(recipe, wd), env=_env("before_done"), capture_output=True, text=True, timeout=600)
    assert first.returncode == -9, first.stderr[-2000:]
    assert _arm_ids(wd) == set(ARMS)
    assert _run_keys(wd) == set()
    killed = [os.path.relpath(os.path.dirname(p), os.path.join(wd, "runs"))
              for p in glob.glob(os.path.join(wd, "runs", "*", "*", "metrics.json"))]
    assert len(killed) == 1, killed
    stale = glob.glob(os.path.join(wd, "claims", "*.claim"))
    assert len(stale) == 1  # the dead worker's claim

    # Without --resume the started study is refused, before any training.
    refused = subprocess.run(_cmd(recipe, wd), env=_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--resume" in refused.stderr, refused.stderr[-2000:]

    again = subprocess.run(_cmd(recipe, wd, "--resume"), env=_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "study: ran 4, already done 0, claimed by other workers 0, failed 0" in again.stdout
    _check_each_run_once(wd)
    # The killed run was resumed (its phase was recorded), not trained again; its output is in its
    # log, the study prints one line per run.
    logs = "".join(open(p).read() for p in glob.glob(os.path.join(wd, "runs", "*", "*.log")))
    assert "phase 1/1 already done" in logs, logs[-3000:]
    assert len([line for line in again.stdout.splitlines() if line.startswith("study: [")]) == 4, again.stdout
    assert "keras_tl: phase" not in again.stdout, again.stdout
    assert "4/4 runs finished" in again.stdout
    assert os.path.exists(os.path.join(wd, "report.md"))


def test_two_shards_started_together_never_run_the_same_run(tmp_path, recipe):
    wd = str(tmp_path / "study")
    procs = [subprocess.Popen(_cmd(recipe, wd, "--shard", f"{i}/2"), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "study: ran 2, already done 0, claimed by other workers 0, failed 0" in out, out
    _check_each_run_once(wd)
    claims = {}
    for path in glob.glob(os.path.join(wd, "claims", "*.claim")):
        info = json.load(open(path))
        claims[os.path.basename(path)[: -len(".claim")]] = info
    assert len(claims) == 4
    by_shard = {}
    for key, info in claims.items():
        by_shard.setdefault(info["shard"], set()).add(key)
    assert set(by_shard) == {"0/2", "1/2"} and all(len(v) == 2 for v in by_shard.values())
    assert len({info["pid"] for info in claims.values()}) == 2  # one worker process per shard
    ran = ["{}/seed{}".format(*re.match(r"study: \[\d+/\d+\] (\S+) seed (\d+):", line).groups())
           for out, _ in outs for line in out.splitlines() if line.startswith("study: [")]
    assert sorted(ran) == sorted(RUNS)  # each run started by exactly one of the two processes
