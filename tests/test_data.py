"""tf.data pipelines: directory / tfds / synthetic sources, decoding, augmentation, bad files."""

import dataclasses
import os
import sys
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_tl.data import Datasets, build_datasets, scan
from keras_tl.errors import DataError
from keras_tl.recipe import AugmentConfig, DataConfig, Recipe, ScaleConfig, SyntheticConfig

NO_AUG = AugmentConfig(flip=False, rot90=False)


def make_recipe(seed=0, **data):
    data.setdefault("image_size", (32, 32))
    data.setdefault("batch_size", 4)
    return Recipe(seed=seed, data=DataConfig(**data))


def write_images(root, classes, n=6, size=(40, 48), mode="RGB", fmt="png", seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(n):
            shape = (size[0], size[1], 3) if mode == "RGB" else size
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            ext = fmt if fmt != "mixed" else ("png" if i % 2 else "jpg")
            Image.fromarray(arr, mode=None).convert(mode).save(os.path.join(root, c, f"img_{i:02d}.{ext}"))
    return str(root)


def batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def stack(ds):
    xs, ys = zip(*batches(ds))
    return np.concatenate(xs), np.concatenate(ys)


# ------------------------------------------------------------------ directory


def test_directory_rgb_png_jpeg(tmp_path):
    root = write_images(tmp_path / "d", ["zebra", "ant", "mole"], n=10, fmt="mixed")
    (tmp_path / "d" / "ant" / "notes.txt").write_text("ignored")
    r = make_recipe(path=root, source="directory", val_fraction=0.2, test_fraction=0.2)
    d = build_datasets(r, augment=False)
    assert isinstance(d, Datasets)
    assert d.class_names == ("ant", "mole", "zebra")
    assert d.counts == {"train": 18, "val": 6, "test": 6}
    assert d.class_counts["val"] == [2, 2, 2]
    assert set(d.info["split_hash"]) == {"train", "val", "test"}
    assert d.info["num_ignored_files"] == 1 and d.info["skipped_files"] == []
    x, y = stack(d.train)
    assert x.dtype == np.float32 and x.shape == (18, 32, 32, 3)
    assert y.dtype == np.int32 and sorted(set(y.tolist())) == [0, 1, 2]
    assert x.max() > 200 and x.min() >= 0 and x.max() <= 255  # raw pixel units, not 0..1
    # same recipe → same split hashes; another split_seed → another split
    d2 = build_datasets(r)
    assert d2.info["split_hash"] == d.info["split_hash"]
    d3 = build_datasets(dataclasses.replace(r, data=dataclasses.replace(r.data, split_seed=1)))
    assert d3.info["split_hash"]["val"] != d.info["split_hash"]["val"]


def test_png_values_survive_unchanged_at_native_size(tmp_path):
    root = write_images(tmp_path / "d", ["a", "b"], n=3, size=(32, 32))
    r = make_recipe(path=root, source="directory", val_fraction=0.0, test_fraction=0.0, augment=NO_AUG)
    d = build_datasets(r, shuffle=False)
    x, y = stack(d.train)
    expect = np.asarray(Image.open(os.path.join(root, "a", "img_00.png")), np.float32)
    assert np.array_equal(x[0], expect) and y[0] == 0
    assert d.val is None and d.test is None


def test_grayscale_replicated_to_three_channels_and_kept_as_one(tmp_path):
    root = write_images(tmp_path / "g", ["a", "b"], n=3, size=(32, 32), mode="L")
    r = make_recipe(path=root, source="directory", val_fraction=0.0, test_fraction=0.0, augment=NO_AUG)
    x3, _ = stack(build_datasets(r, shuffle=False).train)
    assert x3.shape[-1] == 3 and np.array_equal(x3[..., 0], x3[..., 2])
    x1, _ = stack(build_datasets(dataclasses.replace(r, data=dataclasses.replace(r.data, channels=1)), shuffle=False).train)
    assert x1.shape[-1] == 1 and np.allclose(x1[..., 0], x3[..., 0])


def write_arrays(root, classes, n=4, shape=(32, 32, 5), ext="npy", seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(n):
            a = rng.normal(0, 1e3, shape).astype(np.float32)
            p = os.path.join(root, c, f"x{i}.{ext}")
            np.save(p, a) if ext == "npy" else np.savez(p, image=a, other=np.zeros(3))
            arrays[p] = a
    return str(root), arrays


@pytest.mark.parametrize("ext", ["npy", "npz"])
def test_multiband_arrays_unchanged(tmp_path, ext):
    root, arrays = write_arrays(tmp_path / "n", ["a", "b"], ext=ext)
    r = make_recipe(path=root, source="directory", channels=5, val_fraction=0.0, test_fraction=0.0, augment=NO_AUG,
                    scale=ScaleConfig(method="none"))
    d = build_datasets(r, shuffle=False)
    x, y = stack(d.train)
    assert x.shape == (8, 32, 32, 5)
    first = sorted(arrays)[0]
    assert np.array_equal(x[0], arrays[first])  # float values pass through untouched with scale: none
    assert x.min() < -255  # no clipping to 8-bit range
    # The default (auto) scales float arrays into 0..255 and says so.
    auto = build_datasets(dataclasses.replace(r, data=dataclasses.replace(r.data, scale=ScaleConfig())), shuffle=False)
    xa, _ = stack(auto.train)
    assert xa.min() == 0 and xa.max() == 255
    assert auto.info["scale"]["method"] == "percentile" and auto.info["scale"]["requested"] == "auto"
    with pytest.raises(DataError, match=r"has 5 bands .* data.channels is 3"):
        build_datasets(dataclasses.replace(r, data=dataclasses.replace(r.data, channels=3)))


def test_band_mismatch_names_the_file(tmp_path):
    root, _ = write_arrays(tmp_path / "n", ["a", "b"])
    np.save(tmp_path / "n" / "b" / "x9.npy", np.zeros((32, 32, 4), np.float32))
    r = make_recipe(path=root, source="directory", channels=5, val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(DataError, match=r"x9\.npy: has 4 bands"):
        scan(r)


def test_unicode_class_names(tmp_path):
    root = write_images(tmp_path / "u", ["étoile", "galaxie spirale", "星系"], n=2, size=(32, 32))
    r = make_recipe(path=root, source="directory", val_fraction=0.0, test_fraction=0.0)
    d = build_datasets(r)
    assert d.class_names == tuple(sorted(["étoile", "galaxie spirale", "星系"]))
    assert d.counts["train"] == 6


def test_resize_modes(tmp_path):
    root = write_images(tmp_path / "r", ["a", "b"], n=2, size=(40, 64))  # H=40, W=64
    base = make_recipe(path=root, source="directory", val_fraction=0.0, test_fraction=0.0, augment=NO_AUG)
    for mode in ("resize", "pad", "center_crop"):
        r = dataclasses.replace(base, data=dataclasses.replace(base.data, resize=mode))
        x, _ = stack(build_datasets(r, shuffle=False).train)
        assert x.shape == (4, 32, 32, 3)
        if mode == "pad":  # 64 wide → 32 wide: 20 rows, zero bands above and below
            assert np.all(x[:, :5] == 0) and np.all(x[:, -5:] == 0)
        if mode == "center_crop":
            src = np.asarray(Image.open(os.path.join(root, "a", "img_00.png")), np.float32)
            assert np.array_equal(x[0], src[4:36, 16:48])
    small = dataclasses.replace(base, data=dataclasses.replace(base.data, resize="center_crop", image_size=(48, 48)))
    with pytest.raises(DataError, match=r"64x40 px is smaller than data.image_size 48x48 .*center_crop"):
        scan(small)


def test_directory_structure_errors(tmp_path):
    def err(root, match):
        with pytest.raises(DataError, match=match):
            build_datasets(make_recipe(path=str(root), source="directory"))

    err(tmp_path / "missing", "does not exist")
    write_images(tmp_path / "one", ["only"], n=2)
    err(tmp_path / "one", "single class folder 'only'")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "flat" / "a.png")
    err(tmp_path / "flat", r"no class subfolders \(found 1 files")
    write_images(tmp_path / "empty", ["a"], n=2)
    (tmp_path / "empty" / "b").mkdir()
    err(tmp_path / "empty", r"class folder .*b has no images")
    root, _ = write_arrays(tmp_path / "mix", ["a", "b"], n=1)
    write_images(tmp_path / "mix", ["a", "b"], n=1)
    err(tmp_path / "mix", "mixes image files and .npy/.npz")
    write_images(tmp_path / "five", ["a", "b"], n=1)
    with pytest.raises(DataError, match="data.channels: 5 .* .npy/.npz"):
        build_datasets(make_recipe(path=str(tmp_path / "five"), source="directory", channels=5))


# ------------------------------------------------------------------ bad files


@pytest.fixture
def bad_folder(tmp_path):
    root = write_images(tmp_path / "bad", ["a", "b"], n=5, size=(32, 32))
    good = open(os.path.join(root, "a", "img_00.png"), "rb").read()
    open(os.path.join(root, "a", "zz_empty.png"), "wb").close()
    open(os.path.join(root, "b", "zz_trunc.png"), "wb").write(good[: len(good) // 2])
    open(os.path.join(root, "b", "zz_text.png"), "w").write("this is not an image\n")
    return root


def test_bad_files_error_names_first_and_count(bad_folder):
    r = make_recipe(path=bad_folder, source="directory", val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(DataError, match=r"zz_empty\.png: empty file \(0 bytes\) \(3 bad of 13 files\).*on_bad_file: skip"):
        scan(r)
    with pytest.raises(DataError, match="zz_empty.png"):
        build_datasets(r)


def test_bad_files_skip(bad_folder):
    r = make_recipe(path=bad_folder, source="directory", val_fraction=0.2, test_fraction=0.0, on_bad_file="skip")
    result = scan(r)
    reasons = {os.path.basename(b["path"]): b["reason"] for b in result["bad"]}
    assert set(reasons) == {"zz_empty.png", "zz_trunc.png", "zz_text.png"}
    assert "truncated" in reasons["zz_trunc.png"] and "not an image" in reasons["zz_text.png"]
    assert result["skipped_files"] == result["bad"] and result["checked"] == 13
    d = build_datasets(r)
    assert d.counts["train"] + d.counts["val"] == 10
    assert len(d.info["skipped_files"]) == 3
    for _ in range(2):  # iterating every split never hits a bad file
        for ds in (d.train, d.val):
            stack(ds)


# ------------------------------------------------------- augmentation, batching


def test_augment_train_only_and_seeded(tmp_path):
    root = write_images(tmp_path / "aug", ["a", "b"], n=8, size=(32, 32))
    aug = AugmentConfig(flip=True, rot90=True, random_resized_crop=(0.5, 1.0), brightness=0.2, contrast=0.2, noise=3.0)
    r = make_recipe(seed=5, path=root, source="directory", val_fraction=0.25, test_fraction=0.25, augment=aug, deterministic=True)
    d = build_datasets(r)
    for ds in (d.val, d.test):
        a, b = batches(ds), batches(ds)
        assert all(np.array_equal(x1, x2) and np.array_equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    e1, e2 = stack(d.train), stack(d.train)
    assert not np.array_equal(e1[0], e2[0])  # a new epoch: new order and new augmentations
    assert e1[0].min() >= 0 and e1[0].max() <= 255  # 8-bit sources stay in range
    again = build_datasets(r)
    assert np.array_equal(stack(again.train)[0], e1[0])  # same seed → same epoch 1
    other = build_datasets(dataclasses.replace(r, seed=6))
    assert not np.array_equal(stack(other.train)[0], e1[0])
    # augment=False: the train split still shuffles but pixels are the decoded ones
    plain = build_datasets(r, augment=False, shuffle=False)
    x, _ = stack(plain.train)
    assert np.array_equal(x, np.round(x)) and d.info["augment"] and not plain.info["augment"]


def test_batch_size_override_drop_remainder_and_class_weights(tmp_path):
    root = write_images(tmp_path / "bs", ["a", "b"], n=7, size=(32, 32))
    Image.new("RGB", (32, 32)).save(tmp_path / "bs" / "b" / "extra.png")
    r = make_recipe(path=root, source="directory", val_fraction=0.0, test_fraction=0.0, class_weights=True, batch_size=32)
    d = build_datasets(r, global_batch_size=4, drop_remainder=True)
    shapes = [x.shape for x, _ in batches(d.train)]
    assert shapes == [(4, 32, 32, 3)] * 3  # 15 examples, the partial batch dropped
    assert d.class_weights == pytest.approx({0: 15 / 14, 1: 15 / 16})
    with pytest.raises(DataError, match="fewer than the global batch size 64"):
        build_datasets(r, global_batch_size=64, drop_remainder=True)
    assert build_datasets(dataclasses.replace(r, data=dataclasses.replace(r.data, class_weights=False))).class_weights is None


def test_subset_fraction_is_nested_in_pipeline(tmp_path):
    root = write_images(tmp_path / "sub", ["a", "b"], n=10, size=(32, 32))
    base = make_recipe(path=root, source="directory", val_fraction=0.2, test_fraction=0.0, augment=NO_AUG)
    full = build_datasets(base)
    half = build_datasets(dataclasses.replace(base, data=dataclasses.replace(base.data, fraction=0.5)))
    assert half.counts["train"] == 8 and half.class_counts["train"] == [4, 4]
    assert half.info["split_hash"]["val"] == full.info["split_hash"]["val"]  # val untouched by subsetting
    xs_half = {x.tobytes() for x in stack(half.train)[0]}
    xs_full = {x.tobytes() for x in stack(full.train)[0]}
    assert xs_half < xs_full


def test_file_cache(tmp_path):
    root = write_images(tmp_path / "c", ["a", "b"], n=3, size=(32, 32))
    prefix = str(tmp_path / "cache" / "run")
    r = make_recipe(path=root, source="directory", val_fraction=0.0, test_fraction=0.0, cache=prefix, augment=NO_AUG)
    x1, _ = stack(build_datasets(r, shuffle=False).train)
    assert any(n.startswith("run.train.") for n in os.listdir(tmp_path / "cache"))
    x2, _ = stack(build_datasets(r, shuffle=False).train)
    assert np.array_equal(x1, x2)
    r2 = dataclasses.replace(r, data=dataclasses.replace(r.data, cache=str(tmp_path / "cache" / "other")))
    half = iter(build_datasets(r2, shuffle=False, global_batch_size=1).train)
    next(half)  # a run killed while writing the cache leaves a lock file behind
    with pytest.raises(DataError, match=r"data.cache: lock file .*other\.train\..*\.lockfile exists"):
        build_datasets(r2)


# ---------------------------------------------------------------------- tfds


def test_tfds_unprepared_offline(tmp_path):
    r = make_recipe(source="tfds", name="mnist", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(DataError, match=rf"'mnist' is not prepared in {tmp_path}.*tfds build mnist --data_dir"):
        build_datasets(r)
    with pytest.raises(DataError, match=r"no dataset 'mnistt' \(did you mean mnist"):
        build_datasets(make_recipe(source="tfds", name="mnistt", data_dir=str(tmp_path / "tfds")))


def test_tfds_prepared_local_builder(tmp_path):
    import tensorflow_datasets as tfds

    class KerasTlTinyGray(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {"image": tfds.features.Image(shape=(36, 36, 1)), "label": tfds.features.ClassLabel(names=["x", "y", "z"])}
                )
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(30, 0), "test": self._generate_examples(6, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                yield f"{seed}-{i}", {"image": rng.integers(0, 256, (36, 36, 1), dtype=np.uint8), "label": i % 3}

    KerasTlTinyGray(data_dir=str(tmp_path)).download_and_prepare()
    r = make_recipe(source="tfds", name="keras_tl_tiny_gray", data_dir=str(tmp_path), test_split="test", val_fraction=0.2)
    d = build_datasets(r)
    assert d.class_names == ("x", "y", "z")
    assert d.counts == {"train": 24, "val": 6, "test": 6}
    assert d.class_counts["val"] == [2, 2, 2]
    x, y = stack(d.val)
    assert x.shape == (6, 32, 32, 3) and np.array_equal(x[..., 0], x[..., 1])
    assert sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(stack(d.val)[0], x)
    assert d.info["split_origin"]["test"] == "source"
    with pytest.raises(DataError, match=r"data.val_split: keras_tl_tiny_gray has no split 'validation'"):
        build_datasets(dataclasses.replace(r, data=dataclasses.replace(r.data, val_split="validation")))


# ------------------------------------------------------------------ synthetic


@pytest.fixture
def fake_synthetic(monkeypatch):
    """A stand-in with synthetic.py's contract: example i depends only on (seed, i)."""
    mod = types.ModuleType("keras_tl.data.synthetic")
    mod.CLASS_NAMES = ("elliptical", "spiral", "edge_on", "merger")
    mod.SURVEYS = ("decals", "sdss")

    def label_of(index, seed):
        return int(np.random.default_rng([seed, index]).integers(0, 4))

    def generate(indices, *, seed, image_size=64, survey="decals", bands=3, output="uint8", noise_scale=1.0):
        imgs = np.stack([np.random.default_rng([seed, int(i), 1]).integers(0, 256, (image_size, image_size, bands)) for i in indices])
        return (imgs.astype(np.uint8) if output == "uint8" else imgs.astype(np.float32) / 7), np.array([label_of(int(i), seed) for i in indices])

    mod.label_of, mod.generate = label_of, generate
    import keras_tl.data

    monkeypatch.setitem(sys.modules, "keras_tl.data.synthetic", mod)
    monkeypatch.setattr(keras_tl.data, "synthetic", mod, raising=False)
    return mod


def test_synthetic_source_balance_and_determinism(fake_synthetic):
    r = make_recipe(source="synthetic_galaxies", synthetic=SyntheticConfig(count=200, seed=3), val_fraction=0.1, test_fraction=0.1)
    d = build_datasets(r, augment=False)
    assert d.class_names == fake_synthetic.CLASS_NAMES
    assert d.counts == {"train": 160, "val": 20, "test": 20}
    total = np.sum([d.class_counts[s] for s in ("train", "val", "test")], axis=0)
    labels = [fake_synthetic.label_of(i, 3) for i in range(200)]
    assert total.tolist() == np.bincount(labels, minlength=4).tolist()
    for s in ("val", "test"):  # stratified: each class within one example of its share
        assert np.all(np.abs(np.asarray(d.class_counts[s]) - total * 0.1) <= 1)
    x, y = stack(d.val)
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.float32
    assert build_datasets(r).info["split_hash"] == d.info["split_hash"]


def test_real_synthetic_module():
    from keras_tl.data import synthetic

    r = make_recipe(source="synthetic_galaxies", synthetic=SyntheticConfig(count=100, seed=1), val_fraction=0.2, test_fraction=0.0)
    d = build_datasets(r, augment=False)
    assert d.class_names == tuple(synthetic.CLASS_NAMES)
    assert d.class_counts["train"] == [8] * 10 and d.class_counts["val"] == [2] * 10  # balanced and stratified
    x, y = next(iter(d.val))
    assert x.shape[1:] == (32, 32, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
    assert float(tf.reduce_max(x)) > 1.0  # uint8 pixels arrive in 0..255 units
