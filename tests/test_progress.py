"""What a person reads while a run trains: phase k/N, an ETA, evaluation/export lines, and a
warning when a phase learned nothing (keras_tl.train.chance_warning)."""

import os
import subprocess
import sys
import types

import pytest

from keras_tl import train

HEAD = [{"stage": "conv5", "trainable_params": 0}, {"stage": "head", "trainable_params": 10}]
ALL = [{"stage": "conv5", "trainable_params": 99}, {"stage": "head", "trainable_params": 10}]


def _recipe(weights="none"):
    return types.SimpleNamespace(model=types.SimpleNamespace(weights=weights))


def _phase(lr=1e-3):
    return types.SimpleNamespace(lr=lr)


VAL = [10] * 10  # 100 validation images, 10 balanced classes: chance 0.10


@pytest.mark.parametrize("history, rows, recipe, phase, needle", [
    ({"val_accuracy": [0.1, 0.1], "val_loss": [2.3026, 2.3026], "accuracy": [0.1, 0.11]}, HEAD, _recipe(), _phase(),
     "frozen, randomly initialised backbone"),
    ({"val_accuracy": [0.1, 0.12], "val_loss": [2.5, 2.4], "accuracy": [0.5, 0.7]}, ALL, _recipe(), _phase(),
     "BatchNorm moving statistics"),
    ({"val_accuracy": [0.1, 0.1], "val_loss": [9.0, 8.0], "accuracy": [0.1, 0.1]}, ALL, _recipe("imagenet"), _phase(3e-3),
     "10x lower lr"),
    ({"val_accuracy": [0.1], "val_loss": [2.31], "accuracy": [0.1]}, HEAD, _recipe(), _phase(0.0), "learning rate is 0"),
    ({"val_accuracy": [0.3, 0.35], "val_loss": [2.30, 2.29], "accuracy": [0.3, 0.4]}, ALL, _recipe(), _phase(),
     "stayed at ln(10)"),
])
def test_a_phase_at_chance_warns_with_its_likely_cause(history, rows, recipe, phase, needle):
    warning = train.chance_warning(history, VAL, 10, phase, recipe, rows)
    assert warning and needle in warning, warning


def test_a_phase_that_learned_does_not_warn():
    history = {"val_accuracy": [0.2, 0.45], "val_loss": [2.1, 1.5], "accuracy": [0.3, 0.5]}
    assert train.chance_warning(history, VAL, 10, _phase(), _recipe(), ALL) is None
    # Imbalanced validation set: 70% majority class; 0.72 is not learning, 0.9 is.
    skewed = [70] + [10] * 3
    assert train.chance_warning({"val_accuracy": [0.72], "val_loss": [0.9]}, skewed, 4, _phase(), _recipe(), ALL)
    assert train.chance_warning({"val_accuracy": [0.9], "val_loss": [0.3]}, skewed, 4, _phase(), _recipe(), ALL) is None


def test_a_run_that_cannot_learn_says_so_and_shows_its_progress(tmp_path, tiny, recipe_file):
    """lr 0: the phase warns; every message numbers phases from 1, epochs carry an ETA, evaluation
    and export are announced, and stderr stays empty (quiet by default)."""
    raw = tiny()
    raw["train"]["phases"] = [{"name": "frozen", "trainable": "all", "epochs": 1, "lr": 0.0}]
    recipe = recipe_file(tmp_path, raw)
    proc = subprocess.run([sys.executable, "-m", "keras_tl.train", "--recipe", recipe, "--workdir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "keras_tl: WARNING: phase 1/1 (frozen): validation accuracy stayed at chance" in out, out
    assert "the learning rate is 0" in out, out
    assert "phase 1/1 epoch 1/1; elapsed" in out and "run ETA ~" in out, out
    assert "keras_tl: evaluating on val (" in out and "keras_tl: exporting to" in out, out
    assert proc.stderr.strip() == "", proc.stderr
    # Disk: after DONE only what reports, predict, visualize and probe --compare read is kept.
    run = tmp_path / "run"
    assert (run / "DONE").exists() and (run / "export" / "model.keras").exists() and (run / "state.json").exists()
    assert not (run / "checkpoints").exists() and not (run / "backup").exists()
    assert " MB; checkpoints deleted, train.keep_checkpoints: true keeps them)" in out.splitlines()[-1], out
