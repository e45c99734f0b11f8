"""Bad data is found before training: a clear DataError naming the folder/file and the fix, or
(``data.on_bad_file: skip``) a documented skip recorded in the run directory.

Most cases call the data layer directly (what ``keras_tl.train`` calls before building a
model); two go through the CLI: exit 2 with one error line and no checkpoint, and a skip run
whose run dir lists the skipped file.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_tl import recipe as recipe_lib
from keras_tl.errors import DataError


def _png(path, size=(40, 40), mode="RGB", seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    ch = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 255, (size[1], size[0], ch), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if ch == 1 else arr, mode).save(path)
    return path


def _dataset(root, classes=("a", "b"), per_class=6, **kw):
    for c in classes:
        for i in range(per_class):
            _png(os.path.join(root, c, f"{i}.png"), seed=hash((c, i)) % 1000, **kw)
    return str(root)


def _recipe(path, **data):
    raw = {
        "name": "bad",
        "data": {"source": "directory", "path": str(path), "image_size": [32, 32], "batch_size": 4,
                 "val_fraction": 0.25, "test_fraction": 0.0, "augment": {"flip": False, "rot90": False}, **data},
        "model": {"backbone": "mobilenetv3small", "weights": "none", "cut_after": "block2"},
        "train": {"tensorboard": False, "monitor": "val_accuracy", "phases": [{"name": "head", "trainable": "head", "epochs": 1}]},
        "export": {"savedmodel": False},
    }
    return recipe_lib.from_dict(raw)


def _scan(path, **data):
    from keras_tl import data as data_lib

    return data_lib.scan(_recipe(path, **data))


def _build(path, **data):
    from keras_tl import data as data_lib

    return data_lib.build_datasets(_recipe(path, **data))


# ---------------------------------------------------------------- folder layout


def test_empty_class_folder(tmp_path):
    root = _dataset(tmp_path / "d")
    os.makedirs(tmp_path / "d" / "c_empty")
    with pytest.raises(DataError, match=r"class folder .*c_empty has no images .*add some or remove the folder"):
        _scan(root)


def test_single_class(tmp_path):
    root = _dataset(tmp_path / "d", classes=("only",))
    with pytest.raises(DataError, match=r"single class folder 'only'; a classifier needs at least 2 classes"):
        _scan(root)


def test_no_class_folders(tmp_path):
    for i in range(3):
        _png(str(tmp_path / "d" / f"{i}.png"))
    with pytest.raises(DataError, match=r"has no class subfolders \(found 3 files directly in it\)"):
        _scan(tmp_path / "d")


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"data.path: .*nope does not exist"):
        _scan(tmp_path / "nope")


# ----------------------------------------------------------------- bad files


@pytest.mark.parametrize("kind, reason", [
    ("zero_byte", "empty file (0 bytes)"),
    ("truncated", "truncated or corrupt image"),
    ("not_image", "not an image"),
])
def test_bad_file_is_named_with_its_reason(tmp_path, kind, reason):
    root = _dataset(tmp_path / "d")
    bad = tmp_path / "d" / "b" / "bad.png"
    if kind == "zero_byte":
        bad.write_bytes(b"")
    elif kind == "truncated":
        good = (tmp_path / "d" / "b" / "0.png").read_bytes()
        bad.write_bytes(good[: len(good) // 2])
    else:
        bad.write_text("this is a text file with a .png name\n")
    with pytest.raises(DataError) as e:
        _scan(root)
    msg = str(e.value)
    assert str(bad) in msg and reason in msg and "(1 bad of 13 files)" in msg and "on_bad_file: skip" in msg
    assert "\n" not in msg

    # on_bad_file: skip drops it and says so.
    out = _scan(root, on_bad_file="skip")
    assert [b["path"] for b in out["skipped_files"]] == [str(bad)]
    ds = _build(root, on_bad_file="skip")
    assert sum(ds.counts.values()) == 12
    assert [b["path"] for b in ds.info["skipped_files"]] == [str(bad)]


def test_all_files_of_a_class_bad_with_skip(tmp_path):
    root = _dataset(tmp_path / "d")
    for p in (tmp_path / "d" / "b").iterdir():
        p.write_bytes(b"")
    with pytest.raises(DataError, match=r"class 'b' has no readable files after skipping bad ones"):
        _build(root, on_bad_file="skip")


def test_other_files_are_ignored_and_listed(tmp_path):
    root = _dataset(tmp_path / "d")
    (tmp_path / "d" / "a" / "notes.txt").write_text("not data")
    (tmp_path / "d" / "a" / ".DS_Store").write_bytes(b"\0\0")
    ds = _build(root)
    assert sum(ds.counts.values()) == 12
    assert ds.info["ignored_files"] == [str(tmp_path / "d" / "a" / "notes.txt")]


# ------------------------------------------------------------------- channels


def test_mixed_channel_counts_are_converted_to_data_channels(tmp_path):
    """Grayscale, RGB and RGBA files in one folder: each is decoded to data.channels
    (gray → RGB replicated, alpha dropped), as documented in docs/reliability.md."""
    root = tmp_path / "d"
    for i, mode in enumerate(["L", "RGB", "RGBA"] * 2):
        _png(str(root / "a" / f"{i}.png"), mode=mode, seed=i)
        _png(str(root / "b" / f"{i}.png"), mode=mode, seed=10 + i)
    for channels in (3, 1):
        ds = _build(root, channels=channels)
        x, _ = next(iter(ds.train))
        assert x.shape[1:] == (32, 32, channels)


def test_arrays_with_the_wrong_band_count_are_named(tmp_path):
    root = tmp_path / "d"
    for c in "ab":
        for i in range(4):
            os.makedirs(root / c, exist_ok=True)
            np.save(root / c / f"{i}.npy", np.ones((32, 32, 5), np.float32))
    np.save(root / "b" / "odd.npy", np.ones((32, 32, 4), np.float32))
    with pytest.raises(DataError, match=r"odd.npy: has 4 bands \(shape \(32, 32, 4\)\) but data.channels is 5"):
        _scan(root, channels=5)


def test_images_and_arrays_mixed(tmp_path):
    root = _dataset(tmp_path / "d")
    np.save(tmp_path / "d" / "a" / "x.npy", np.ones((32, 32, 3), np.float32))
    with pytest.raises(DataError, match=r"mixes image files and .npy/.npz arrays"):
        _scan(root)


# ---------------------------------------------------------------------- sizes


def test_images_smaller_than_the_target(tmp_path):
    root = _dataset(tmp_path / "d", size=(40, 40))
    _png(str(tmp_path / "d" / "a" / "tiny.png"), size=(20, 12))
    # resize (the default) and pad scale every image to image_size: a documented, lossless-of-content choice.
    for mode in ("resize", "pad"):
        ds = _build(root, resize=mode)
        assert sum(ds.counts.values()) == 13
    # center_crop would pad the small image with zeros: refused in the scan, naming it.
    with pytest.raises(DataError, match=r"tiny.png: 20x12 px is smaller than data.image_size 32x32 with data.resize: center_crop"):
        _scan(root, resize="center_crop")


# ---------------------------------------------------------------- label names


def test_unicode_and_odd_label_names_are_read_as_given(tmp_path):
    names = ("galaxie spirale é", "-rf", "a\\b", "日本", "x..y")
    root = tmp_path / "d"
    for k, n in enumerate(names):
        for i in range(4):
            _png(str(root / n / f"{i}.png"), seed=k * 10 + i)
    ds = _build(root, val_fraction=0.25)
    assert ds.class_names == tuple(sorted(names))
    assert sum(ds.counts.values()) == 20


def test_label_names_with_control_characters_are_refused(tmp_path):
    root = _dataset(tmp_path / "d")
    os.rename(tmp_path / "d" / "b", tmp_path / "d" / "b\nc")
    with pytest.raises(DataError, match=r"class folder name .*control characters"):
        _scan(root)


# ----------------------------------------------------------------------- tfds


def test_unknown_tfds_name(tmp_path):
    from keras_tl import data as data_lib

    raw = {"data": {"source": "tfds", "name": "eurosatt/rgb", "data_dir": str(tmp_path)}, "model": {"weights": "none"}}
    with pytest.raises(DataError, match=r"data.name: TFDS has no dataset 'eurosatt/rgb' \(did you mean eurosat"):
        data_lib.scan(recipe_lib.from_dict(raw))


def test_known_but_unprepared_tfds_dataset_never_downloads(tmp_path):
    from keras_tl import data as data_lib

    raw = {"data": {"source": "tfds", "name": "mnist", "data_dir": str(tmp_path)}, "model": {"weights": "none"}}
    with pytest.raises(DataError, match=r"'mnist' is not prepared in .*tfds build mnist"):
        data_lib.build_datasets(recipe_lib.from_dict(raw))
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


# ------------------------------------------------------------------------ CLI


def _cli(recipe_path, workdir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERAS_TL_FAULT", None)
    return subprocess.run([sys.executable, "-m", "keras_tl.train", "--recipe", recipe_path, "--workdir", str(workdir)],
                          env=env, capture_output=True, text=True, timeout=900)


def _write(tmp_path, recipe):
    path = tmp_path / "r.yaml"
    path.write_text(recipe_lib.dump(recipe))
    return str(path)


def test_cli_bad_file_exits_2_before_training(tmp_path):
    root = _dataset(tmp_path / "d")
    (tmp_path / "d" / "a" / "zero.png").write_bytes(b"")
    wd = tmp_path / "wd"
    out = _cli(_write(tmp_path, _recipe(root)), wd)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: data.path: bad file ") and "zero.png: empty file (0 bytes)" in lines[-1]
    assert not [l for l in lines[:-1] if "Traceback" in l or l.startswith("error")]
    assert not wd.exists()  # the pre-flight writes nothing: no checkpoints, logs or epochs


def test_cli_skip_records_the_skipped_file_in_the_run_dir(tmp_path):
    # Odd class names too: they reach labels.txt and the records, never a file name.
    root = _dataset(tmp_path / "d", classes=("a", "évil\\..name"))
    bad = tmp_path / "d" / "a" / "zero.png"
    bad.write_bytes(b"")
    wd = tmp_path / "wd"
    out = _cli(_write(tmp_path, _recipe(root, on_bad_file="skip")), wd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipping 1 unreadable files" in out.stdout
    listed = json.load(open(wd / "skipped_files.json"))
    assert [b["path"] for b in listed["skipped_files"]] == [str(bad)]
    run = json.load(open(wd / "run.json"))
    assert [b["path"] for b in run["data"]["skipped_files"]] == [str(bad)]
    assert run["data"]["counts"]["train"] + run["data"]["counts"]["val"] == 12
    assert open(wd / "export" / "labels.txt", encoding="utf-8").read().splitlines() == ["a", "évil\\..name"]
    files = {os.path.relpath(os.path.join(d, n), wd) for d, _, ns in os.walk(wd) for n in ns}
    assert not [f for f in files if "évil" in f or "\\" in f], files
