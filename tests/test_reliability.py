"""kill -9 during checkpoint writes and after training: rerunning the same command resumes,
finishes, and matches an uninterrupted run; no torn file is ever used.

tests/test_train.py covers a kill mid-epoch and before the export rename. Here each test is
a chain of kills on one run directory (cheaper than one run per crash point). A torn file
("killed during the write") is simulated by truncating the file the killed process had just
written or was about to replace, exactly as a kill in the middle of ``write()`` leaves it.
Crash points: keras_tl/faults.py, ``KERAS_TL_FAULT``.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from keras_tl import recipe as recipe_lib

# The recipe: tests/conftest.py's TINY (2 phases x 2 epochs, head on cached features, then all).


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny, recipe_file):
    """Metrics of the uninterrupted run."""
    from keras_tl import train

    tmp = tmp_path_factory.mktemp("ref")
    return train.run(recipe_lib.load(recipe_file(tmp, tiny())), str(tmp / "wd"), log=lambda *a: None)


def _cli(recipe_path, workdir, fault=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERAS_TL_FAULT", None)
    if fault:
        env["KERAS_TL_FAULT"] = fault
    cmd = [sys.executable, "-m", "keras_tl.train", "--recipe", recipe_path, "--workdir", workdir]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _kill_at(recipe_path, wd, fault):
    out = _cli(recipe_path, wd, fault)
    assert out.returncode == -9, f"{fault}: expected SIGKILL, got {out.returncode}\n{out.stderr[-2000:]}"
    assert not os.path.exists(os.path.join(wd, "DONE"))


def _tear(path):
    """Leave ``path`` as a kill in the middle of writing it would: the first half of its bytes."""
    size = os.path.getsize(path)
    assert size > 100, path
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _finish(recipe_path, wd):
    out = _cli(recipe_path, wd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stdout + out.stderr
    assert os.path.exists(os.path.join(wd, "DONE"))
    leftovers = [os.path.join(d, n) for d, _, names in os.walk(wd) for n in names if ".partial." in n or ".tmp-" in n]
    leftovers += [n for n in os.listdir(wd) if n.startswith(".export.tmp-")]
    assert not leftovers, leftovers
    return json.load(open(os.path.join(wd, "metrics.json")))


def test_torn_checkpoint_writes_resume_and_finish(reference, tmp_path, tiny, recipe_file):
    recipe_path, wd = recipe_file(tmp_path, tiny()), str(tmp_path / "wd")

    # 1. Killed while BackupAndRestore rewrote its backup after phase 0's second epoch: Keras
    #    copies the previous backup to *.bkp first, so the torn latest file must fall back to it.
    _kill_at(recipe_path, wd, "epoch_end:0:0")
    backup = os.path.join(wd, "backup", "phase0")
    shutil.copy(os.path.join(backup, "latest.weights.h5"), os.path.join(backup, "latest.weights.h5.bkp"))
    shutil.copy(os.path.join(backup, "training_metadata.json"), os.path.join(backup, "training_metadata.json.bkp"))
    _tear(os.path.join(backup, "latest.weights.h5"))

    # 2. Killed in the middle of writing phase 1's best-epoch weights (written beside, then renamed).
    _kill_at(recipe_path, wd, "checkpoint:1")
    partial = os.path.join(wd, "checkpoints", "best_1.partial.weights.h5")
    assert os.path.exists(partial)
    _tear(partial)
    assert json.load(open(os.path.join(wd, "state.json")))["phases"][0]["name"] == "head"

    # 3. Killed while saving phase 1's final weights, before state.json recorded the phase.
    _kill_at(recipe_path, wd, "phase_end:1")
    _tear(os.path.join(wd, "checkpoints", "phase1.weights.h5"))
    assert len(json.load(open(os.path.join(wd, "state.json")))["phases"]) == 1

    metrics = _finish(recipe_path, wd)
    assert len(metrics["history"]["loss"]) == 4  # one row per epoch: nothing lost, nothing doubled
    run = json.load(open(os.path.join(wd, "run.json")))
    assert [p["name"] for p in run["phases"]] == ["head", "ft"]
    # Phase 0's second epoch was redone (from the backup, with a fresh data order).
    assert abs(metrics["test"]["accuracy"] - reference["test"]["accuracy"]) <= 0.25


def test_kills_after_training_change_nothing(reference, tmp_path, tiny, recipe_file):
    recipe_path, wd = recipe_file(tmp_path, tiny()), str(tmp_path / "wd")
    # Phase 0 completely trained and backed up but not yet recorded: the rerun trains no epoch of
    # it again and takes its best epoch from the best-weights checkpoint.
    _kill_at(recipe_path, wd, "epoch_end:0:1")
    _kill_at(recipe_path, wd, "phase_recorded:1")  # every phase recorded, nothing evaluated
    _kill_at(recipe_path, wd, "before_done")  # export and records written, DONE not yet
    export_before = os.path.getmtime(os.path.join(wd, "export", "model.keras"))
    metrics = _finish(recipe_path, wd)
    run = json.load(open(os.path.join(wd, "run.json")))
    assert run["export"]["reused"] is True
    assert os.path.getmtime(os.path.join(wd, "export", "model.keras")) == export_before
    assert len(metrics["history"]["loss"]) == 4
    # No epoch was redone. Phase 1 was trained by the second process, whose dropout random
    # stream starts afresh (measured: test loss differs by ~4e-5, accuracy identical).
    assert metrics["test"]["accuracy"] == pytest.approx(reference["test"]["accuracy"], abs=1e-6)
    assert metrics["test"]["loss"] == pytest.approx(reference["test"]["loss"], abs=1e-3)
    assert metrics["history"]["val_loss"] == pytest.approx(reference["history"]["val_loss"], abs=1e-3)
