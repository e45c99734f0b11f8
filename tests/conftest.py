"""Shared test setup: quiet TensorFlow's C++ logging before anything imports it, keep every test
(and every process it starts) off the internet, and the tiny recipe."""

import copy
import os
import pathlib
import tempfile

import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A request for ImageNet weights that are not in a test's own Keras cache fails at once at this
# mirror directory, which does not exist, instead of reaching storage.googleapis.com. Tests of
# the download path point KERAS_TL_WEIGHTS_MIRROR at their own 127.0.0.1 servers.
os.environ["KERAS_TL_WEIGHTS_MIRROR"] = os.path.join(tempfile.gettempdir(), "keras_tl-tests-offline-no-mirror")

# The trainer's tests run this recipe end to end (tests/test_train.py, test_reliability.py,
# test_safety.py): 2 phases x 2 epochs, the head on cached features, then every layer.
TINY = {
    "name": "tiny",
    "seed": 3,
    "data": {
        "source": "synthetic_galaxies",
        "synthetic": {"count": 120, "seed": 7},
        "image_size": [32, 32],
        "batch_size": 16,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "augment": {"flip": False, "rot90": False},
    },
    # cut_after keeps the graph small: these tests are about the trainer, not the backbone.
    "model": {"backbone": "mobilenetv3small", "weights": "none", "cut_after": "block2",
              "head": [{"units": 16, "dropout": 0.1}]},
    "train": {
        "tensorboard": False,
        "deterministic": True,
        "phases": [
            {"name": "head", "trainable": "head", "epochs": 2, "lr": 3e-3},
            {"name": "ft", "trainable": "all", "epochs": 2, "lr": 1e-4, "schedule": "cosine"},
        ],
    },
}


@pytest.fixture(scope="session")
def tiny():
    """``tiny()``: a fresh copy of :data:`TINY` (a plain dict, free to change)."""
    return lambda: copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def recipe_file():
    """``recipe_file(directory, raw)``: ``raw`` written as ``<directory>/tiny.yaml``; its path."""
    def write(directory, raw) -> str:
        path = pathlib.Path(directory) / "tiny.yaml"
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    return write
