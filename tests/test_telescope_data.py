"""Telescope data as astronomers keep it: FITS cutouts, HDF5 catalogues, NaN policies, flux scaling.

Every file is written by the test (astropy writes the FITS, h5py the HDF5), a few 32 px images each.
"""

import dataclasses
import gzip
import json
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from astropy.io import fits

from keras_tl import export, predict
from keras_tl import recipe as recipe_lib
from keras_tl.data import build_datasets, hdf5, scale
from keras_tl.errors import DataError
from keras_tl.recipe import AugmentConfig, DataConfig, ExportConfig, FitsConfig, Hdf5Config, Recipe, RecipeError, ScaleConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_AUG = AugmentConfig(flip=False, rot90=False)
S = 32


def make_recipe(**data):
    base = dict(image_size=(S, S), batch_size=4, val_fraction=0.0, test_fraction=0.0, augment=NO_AUG)
    return Recipe(name="t", data=DataConfig(**{**base, **data}))


def stack(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def flux(rng, bands=5, size=S):
    """(H, W, C) float32 fluxes: sky noise plus a blob, each band at its own brightness."""
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / 30.0)
    gains = 10.0 ** np.arange(bands)  # bands differ by 10x each: per-band scaling must undo that
    return ((rng.normal(0, 0.05, (size, size, bands)) + blob[..., None] * rng.uniform(0.5, 3)) * gains).astype(np.float32)


def write_fits(path, image, kind="fits", hdu_name=None, extra_hdus=()):
    """``image`` (H, W, C) as a (C, H, W) cube (2-D when C == 1 and kind == '2d')."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = image[..., 0] if kind == "2d" else np.transpose(image, (2, 0, 1))
    if kind == "fz":
        hdul = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, name=hdu_name or "SCI", compression_type="GZIP_2", quantize_level=0.0)])
    elif hdu_name:
        hdul = fits.HDUList([fits.PrimaryHDU(), *extra_hdus, fits.ImageHDU(data, name=hdu_name)])
    else:
        hdul = fits.HDUList([fits.PrimaryHDU(data), *extra_hdus])
    if kind == "gz":
        import io

        buf = io.BytesIO()
        hdul.writeto(buf)
        with open(path, "wb") as f:
            f.write(gzip.compress(buf.getvalue()))
    else:
        hdul.writeto(path)
    return path


def fits_folder(root, n=4, bands=5, kinds=("fits", "gz", "fz"), seed=0, nan_at=None):
    """Two classes of FITS cutouts; returns {path: image}. ``nan_at``: {index: [(y, x, band)]}."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in ("a", "b"):
        for i in range(n):
            kind = kinds[i % len(kinds)]
            img = flux(rng, bands)
            for y, x, b in (nan_at or {}).get((c, i), []):
                img[y, x, b] = np.nan
            ext = {"fits": ".fits", "gz": ".fits.gz", "fz": ".fz", "2d": ".fits"}[kind]
            out[write_fits(os.path.join(root, c, f"{i}{ext}"), img, kind)] = img
    return out


# ------------------------------------------------------------------------------ FITS


def test_fits_fits_gz_and_fz_cubes_read_as_written(tmp_path):
    images = fits_folder(tmp_path / "d")
    r = make_recipe(source="directory", path=str(tmp_path / "d"), channels=5, scale=ScaleConfig(method="none"))
    d = build_datasets(r, shuffle=False)
    x, y = stack(d.train)
    assert x.shape == (8, S, S, 5) and d.info["fits_hdu"]["read"] == [0, 1]  # primary, and extension 1 of .fz
    want = np.stack([images[p] for p in sorted(images)])
    np.testing.assert_array_equal(x, want)  # float fluxes, bit-exact, from all three containers
    assert d.info["scale"] == {"method": "none", "requested": "none", "per": "image and band"}


def test_fits_hdu_by_name_and_index_and_2d_images(tmp_path):
    rng = np.random.default_rng(1)
    img = {c: flux(rng, 1) for c in "ab"}
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.zeros(3))], name="CAT")
    for c in "ab":
        for i in range(2):
            write_fits(str(tmp_path / "d" / c / f"{i}.fits"), img[c], "2d", hdu_name="SCI", extra_hdus=[table])
    for hdu in ("SCI", "sci", 2, None):
        r = make_recipe(source="directory", path=str(tmp_path / "d"), channels=1, fits=FitsConfig(hdu=hdu), scale=ScaleConfig(method="none"))
        x, _ = stack(build_datasets(r, shuffle=False).train)
        np.testing.assert_array_equal(x[0], img["a"])
    # An index that holds a table, or a name no file has, is a bad file naming the HDUs there are.
    for hdu, reason in ((1, r"HDU 1 is a BinTableHDU, not an image"), ("NOPE", r"has no HDU 'NOPE' \(HDUs: 0:PRIMARY")):
        r = make_recipe(source="directory", path=str(tmp_path / "d"), channels=1, fits=FitsConfig(hdu=hdu))
        with pytest.raises(DataError, match=reason):
            build_datasets(r)


def _bad_fits(tmp_path, kind):
    good = fits_folder(tmp_path / "d", n=3, kinds=("fits",))
    bad = tmp_path / "d" / "b" / f"bad_{kind}.fits"
    first = open(sorted(good)[0], "rb").read()
    if kind == "truncated":
        bad.write_bytes(first[: len(first) - 3000])
    elif kind == "truncated_gz":
        bad = bad.with_name("bad.fits.gz")
        z = gzip.compress(first)
        bad.write_bytes(z[: len(z) // 2])
    elif kind == "no_image":
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.zeros(3))])]).writeto(bad)
    elif kind == "wrong_dims":
        fits.PrimaryHDU(np.zeros((2, 5, S, S), np.float32)).writeto(bad)
    elif kind == "wrong_bands":
        fits.PrimaryHDU(np.zeros((3, S, S), np.float32)).writeto(bad)
    elif kind == "not_fits":
        bad.write_text("SIMPLE? no, a text file\n" * 10)
    return str(tmp_path / "d"), str(bad)


@pytest.mark.parametrize("kind, reason", [
    ("truncated", r"truncated FITS file: \d+ bytes, HDU 0 needs \d+"),
    ("truncated_gz", r"truncated or corrupt gzip data"),
    ("no_image", r"no HDU holds an image \(HDUs: 0:PRIMARY\(PrimaryHDU, NAXIS=0\), 1:-?\w*\(BinTableHDU"),
    ("wrong_dims", r"HDU 0 has shape \(2, 5, 32, 32\); expected a 2-D image \(H, W\) or a cube \(C, H, W\)"),
    ("wrong_bands", r"has 3 bands \(shape \(32, 32, 3\)\) but data.channels is 5"),
    ("not_fits", r"not a readable FITS file"),
])
def test_bad_fits_files_under_both_on_bad_file_modes(tmp_path, kind, reason):
    root, bad = _bad_fits(tmp_path, kind)
    r = make_recipe(source="directory", path=root, channels=5)
    with pytest.raises(DataError) as e:
        build_datasets(r)
    msg = str(e.value)
    assert f"bad file {bad}: " in msg and "(1 bad of 7 files)" in msg and "on_bad_file: skip" in msg
    assert __import__("re").search(reason, msg), msg
    skip = build_datasets(dataclasses.replace(r, data=dataclasses.replace(r.data, on_bad_file="skip")))
    assert [b["path"] for b in skip.info["skipped_files"]] == [bad] and skip.counts == {"train": 6}


# ------------------------------------------------------------------------------ NaN


def test_nan_policies(tmp_path):
    holes = {("a", 0): [(3, 4, 0), (5, 6, 2)], ("b", 1): [(0, 0, 4)]}
    images = fits_folder(tmp_path / "d", n=2, kinds=("fits",), nan_at=holes)
    first = sorted(images)[0]  # a/0.fits
    r = make_recipe(source="directory", path=str(tmp_path / "d"), channels=5, scale=ScaleConfig(method="none"))
    # error (default): names the file and the count of NaN pixels.
    with pytest.raises(DataError, match=rf"bad file {first}: has 2 NaN pixels of 5120 .*set data.nan: zero or median .*\(2 bad of 4 files\)"):
        build_datasets(r)
    for policy in ("zero", "median"):
        d = build_datasets(dataclasses.replace(r, data=dataclasses.replace(r.data, nan=policy)), shuffle=False)
        x, _ = stack(d.train)
        assert np.isfinite(x).all()
        src = images[first]
        want = 0.0 if policy == "zero" else np.nanmedian(src[..., 0])
        assert x[0, 3, 4, 0] == pytest.approx(want, rel=1e-6)
        assert x[0, 5, 6, 2] == pytest.approx(0.0 if policy == "zero" else np.nanmedian(src[..., 2]), rel=1e-6)
        np.testing.assert_array_equal(x[0][np.isfinite(src)], src[np.isfinite(src)])  # other pixels untouched
        assert d.info["nan"]["policy"] == policy and d.info["nan"]["examples_with_nan"] == 2 and d.info["nan"]["nan_pixels"] == 3
        assert [e["nan_pixels"] for e in d.info["nan"]["examples"]] == [2, 1]
        assert d.info["input_transform"]["nan"] == policy


def test_nan_median_refuses_an_all_nan_band_and_inf_is_always_bad(tmp_path):
    fits_folder(tmp_path / "d", n=2, kinds=("fits",))
    img = flux(np.random.default_rng(5))
    img[..., 3] = np.nan
    write_fits(str(tmp_path / "d" / "a" / "dead.fits"), img)
    img = flux(np.random.default_rng(6))
    img[1, 1, 1] = np.inf
    write_fits(str(tmp_path / "d" / "b" / "hot.fits"), img)
    r = make_recipe(source="directory", path=str(tmp_path / "d"), channels=5, nan="median", on_bad_file="skip")
    d = build_datasets(r)
    reasons = {os.path.basename(b["path"]): b["reason"] for b in d.info["skipped_files"]}
    assert "band 3 is all NaN" in reasons["dead.fits"] and "1 infinite values" in reasons["hot.fits"]


# -------------------------------------------------------------------------- scaling


def test_percentile_and_asinh_scaling_per_band_match_numpy():
    rng = np.random.default_rng(2)
    x = np.stack([flux(rng), flux(rng)])
    for method in ("percentile", "asinh"):
        spec = {"nan": "error", "scale": {"method": method, "clip": [1.0, 99.0], "softening": 0.05}}
        got = scale.apply(x, spec).numpy()
        lo = np.percentile(x, 1.0, axis=(1, 2), keepdims=True)
        hi = np.percentile(x, 99.0, axis=(1, 2), keepdims=True)
        u = np.clip((x - lo) / (hi - lo), 0, 1)
        want = 255 * (np.arcsinh(u / 0.05) / np.arcsinh(1 / 0.05) if method == "asinh" else u)
        np.testing.assert_allclose(got, want, atol=2e-3)
        # Per band: every band spans 0..255 although the raw bands differ by 10^4 in brightness.
        assert np.allclose(got.min(axis=(1, 2)), 0) and np.allclose(got.max(axis=(1, 2)), 255)
        # Per image: an image's transform depends on that image only (batch of 2 == each alone).
        np.testing.assert_array_equal(got[1], scale.apply(x[1], spec).numpy())
    flat = scale.apply(np.ones((S, S, 2), np.float32), {"nan": "error", "scale": {"method": "percentile", "clip": [1, 99]}})
    assert np.array_equal(flat.numpy(), np.zeros((S, S, 2)))  # a flat band has no contrast: 0, not NaN


def test_scaling_in_the_pipeline_is_deterministic_and_recorded(tmp_path):
    fits_folder(tmp_path / "d", n=3)
    r = make_recipe(source="directory", path=str(tmp_path / "d"), channels=5, val_fraction=0.34,
                    scale=ScaleConfig(method="asinh", clip=(0.5, 99.5), softening=0.1))
    a, b = build_datasets(r, shuffle=False), build_datasets(r, shuffle=False)
    xa, _ = stack(a.train)
    xb, _ = stack(b.train)
    assert xa.min() == 0.0 and xa.max() == 255.0 and np.array_equal(xa, xb)
    assert a.info["scale"] == {"method": "asinh", "clip": [0.5, 99.5], "softening": 0.1, "requested": "asinh", "per": "image and band"}
    # auto: none for 8-bit data (uint8 FITS here), the float choice for float data.
    u8 = tmp_path / "u8"
    for c in "ab":
        for i in range(2):
            write_fits(str(u8 / c / f"{i}.fits"), np.full((S, S, 3), 40 * i + 7, np.uint8))
    d8 = build_datasets(make_recipe(source="directory", path=str(u8)), shuffle=False)
    assert d8.info["scale"]["method"] == "none" and d8.info["scale"]["requested"] == "auto"
    assert stack(d8.train)[0].max() == 47.0  # values unchanged
    df = build_datasets(dataclasses.replace(r, data=dataclasses.replace(r.data, scale=ScaleConfig())), shuffle=False)
    assert df.info["scale"]["method"] == scale.AUTO_FLOAT and "float" in df.info["scale"]["reason"]


def tiny_model(channels, classes=2):
    inputs = keras.Input((S, S, channels), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    b_in = keras.Input((S, S, channels))
    b = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv1_conv")(b_in)
    x = keras.Model(b_in, b, name="backbone")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, out)


@pytest.mark.parametrize("method, nan", [("percentile", "median"), ("asinh", "zero")])
def test_export_takes_raw_fluxes_and_agrees_with_training(tmp_path, method, nan):
    holes = {("a", 0): [(3, 4, 0)], ("b", 2): [(7, 7, 1), (8, 8, 1)]}
    images = fits_folder(tmp_path / "d", n=3, nan_at=holes)
    r = make_recipe(source="directory", path=str(tmp_path / "d"), channels=5, nan=nan,
                    scale=ScaleConfig(method=method, clip=(1.0, 99.0), softening=0.2))
    r = dataclasses.replace(r, export=ExportConfig(backbone_weights=False))
    d = build_datasets(r, shuffle=False)
    keras.utils.set_random_seed(0)
    model = tiny_model(5)
    out = str(tmp_path / "export")
    info = export.export_run(model, out, class_names=d.class_names, recipe=r, sample_images=d.serving_samples(4),
                             input_transform=d.input_transform)
    assert info["input"]["transform"] == d.input_transform == {"nan": nan, "scale": d.info["input_transform"]["scale"]}
    assert info["verification"]["savedmodel_max_abs_diff"] <= 1e-4
    # Training saw these (pipeline: decode, NaN policy, resize, scaling) ...
    x_train, _ = stack(d.train_in_order)
    want = model.predict(x_train, verbose=0)
    # ... and the SavedModel gets the files' raw fluxes, NaN included, and must agree.
    p = predict.Predictor(out)
    paths = sorted(images)
    raw = np.stack([predict.read_image(q, (S, S), 5, "resize", p.transform["nan"]) for q in paths])
    assert np.isnan(raw).sum() == 3
    np.testing.assert_allclose(p.predict(raw), want, atol=1e-5)
    # The transform itself: the SavedModel's scaling equals the pipeline's, value for value.
    np.testing.assert_allclose(scale.apply(raw, d.input_transform).numpy(), x_train, atol=1e-4)
    results = list(predict.classify(p, paths, top_k=1))
    assert all(err is None for _, _, err in results)
    assert [t[0][1] for _, t, _ in results] == pytest.approx(want.max(axis=1).tolist(), abs=1e-5)
    # keras_tl.visualize feeds model.keras through the same transform, read from export.json.
    from keras_tl import visualize

    assert visualize.input_transform_for(os.path.join(out, "model.keras")) == d.input_transform


def test_export_with_nan_error_refuses_nan_in_serving(tmp_path):
    fits_folder(tmp_path / "d", n=2, kinds=("fits",))
    r = dataclasses.replace(make_recipe(source="directory", path=str(tmp_path / "d"), channels=5),
                            export=ExportConfig(backbone_weights=False, keras=False))
    d = build_datasets(r, shuffle=False)
    out = str(tmp_path / "export")
    export.export_run(tiny_model(5), out, class_names=d.class_names, recipe=r, sample_images=d.serving_samples(2),
                      input_transform=d.input_transform)
    x = d.serving_samples(2)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="data.nan: error"):
        predict.Predictor(out).predict(x)
    bad = tmp_path / "nan.fits"
    write_fits(str(bad), x[0])
    with pytest.raises(DataError, match=r"nan.fits: has 1 NaN pixels and the model was trained with data.nan: error"):
        predict.read_image(str(bad), (S, S), 5)


# ------------------------------------------------------------------------------ HDF5


def galaxy10(path, n=40, size=S, chunks=(4, S, S, 3), names_attr=False, dtype=np.uint8):
    """A file with the Galaxy10 DECaLS layout: images (N, H, W, 3) uint8, ans (N,) uint8, + ra/dec."""
    rng = np.random.default_rng(3)
    labels = (np.arange(n) % 3).astype(np.uint8)
    if dtype == np.uint8:
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    else:
        images = rng.normal(0, 1, (n, size, size, 3)).astype(dtype)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=chunks, compression="gzip")
        ans = f.create_dataset("ans", data=labels)
        f.create_dataset("ra", data=rng.uniform(0, 360, n))
        if names_attr:
            ans.attrs["class_names"] = np.array([b"round", b"spiral", b"merger"])
    return images, labels


def h5_recipe(path, **kw):
    return make_recipe(source="hdf5", path=str(path), hdf5=Hdf5Config(**{"images": "images", "labels": "ans", **kw.pop("h5", {})}), **kw)


def test_hdf5_galaxy10_layout_is_streamed_in_blocks(tmp_path, monkeypatch):
    path = tmp_path / "Galaxy10_DECals.h5"
    images, labels = galaxy10(path)
    reads = []
    real = h5py.Dataset.__getitem__

    def spy(self, key):
        out = real(self, key)
        if self.name == "/images":
            reads.append(out.shape[0])
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    monkeypatch.setattr(hdf5, "BLOCK_BYTES", 6 * S * S * 3)  # 6 rows per read
    r = h5_recipe(path, val_fraction=0.25, h5={"class_names": ["round", "spiral", "merger"]})
    d = build_datasets(r, shuffle=False)
    assert d.class_names == ("round", "spiral", "merger") and d.counts == {"train": 30, "val": 10}
    assert d.info["scale"]["method"] == "none"  # uint8: auto keeps 0..255
    assert reads == []  # listing and the scan read no image (uint8 holds no NaN)
    x, y = stack(d.train_in_order)
    xv, yv = stack(d.val)
    # Every image read in blocks: a slice of at most 2 x 6 rows or a point selection of at most 6.
    assert reads and max(reads) <= 12 and sum(reads) < 3 * len(images)
    assert 40 not in reads
    # Pool order, exact values: match each image back to its row.
    rows = {images[i].tobytes(): i for i in range(len(images))}
    got = [rows[im.astype(np.uint8).tobytes()] for im in np.concatenate([x, xv])]
    assert sorted(got) == list(range(40)) and [labels[i] for i in got] == np.concatenate([y, yv]).tolist()
    # Class names from an attribute of the labels dataset; none given: the label values.
    galaxy10(tmp_path / "g2.h5", names_attr=True)
    assert build_datasets(h5_recipe(tmp_path / "g2.h5", h5={"class_names": "class_names"})).class_names == ("round", "spiral", "merger")
    assert build_datasets(h5_recipe(tmp_path / "g2.h5")).class_names == ("0", "1", "2")


def test_hdf5_read_rows_never_reads_the_whole_dataset(tmp_path):
    path = tmp_path / "g.h5"
    images, _ = galaxy10(path, n=50)
    with h5py.File(path, "r") as f:
        rows = np.array([1, 7, 20, 44])  # sparse: a point selection, not a 44-row slice
        np.testing.assert_array_equal(hdf5.read_rows(f["images"], rows), images[rows])
        dense = np.array([10, 11, 13, 14])
        np.testing.assert_array_equal(hdf5.read_rows(f["images"], dense), images[dense])
    order = np.array([9, 3, 30, 2, 41])
    got = np.concatenate([b for _, b in hdf5.iter_blocks(str(path), "images", order, 2)])
    np.testing.assert_array_equal(got, images[order])


def test_hdf5_float_nan_rows_are_named_and_skippable(tmp_path):
    path = tmp_path / "f.h5"
    images, _ = galaxy10(path, n=12, dtype=np.float32, chunks=None)
    with h5py.File(path, "r+") as f:
        f["images"][5, 0, 0, 1] = np.nan
    r = h5_recipe(path, channels=3)
    with pytest.raises(DataError, match=rf"bad file {path}:images\[5\]: has 1 NaN pixels .*\(1 bad of 12 images\)"):
        build_datasets(r)
    d = build_datasets(dataclasses.replace(r, data=dataclasses.replace(r.data, on_bad_file="skip")))
    assert d.counts == {"train": 11} and d.info["skipped_files"][0]["row"] == 5
    m = build_datasets(dataclasses.replace(r, data=dataclasses.replace(r.data, nan="median")))
    assert m.counts == {"train": 12} and m.info["nan"]["nan_pixels"] == 1 and m.info["scale"]["method"] == scale.AUTO_FLOAT


@pytest.mark.parametrize("h5, channels, match", [
    ({"images": "imgs"}, 3, r"data.hdf5.images: .* has no dataset 'imgs'; its datasets are ans, images, ra"),
    ({"labels": "ra"}, 3, r"data.hdf5.labels: 'ra' .* holds float64 values; expected integer class indices"),
    ({"class_names": ["x", "y"]}, 3, r"row 2 of /ans has label 2 but data.hdf5.class_names lists 2 classes"),
    ({"class_names": "names"}, 3, r"no attribute 'names' on /ans or the file"),
    ({}, 5, r"data.channels: 5 but 'images' in .* has 3 channels"),
])
def test_hdf5_errors_name_the_key(tmp_path, h5, channels, match):
    galaxy10(tmp_path / "g.h5", n=9)
    with pytest.raises(DataError, match=match):
        build_datasets(h5_recipe(tmp_path / "g.h5", h5=h5, channels=channels))


# ------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("yaml_text, message", [
    ("data: {scale: asinh}", "data.scale: expected a mapping of keys, got 'asinh' (did you mean {method: asinh}?)"),
    ("data: {scale: {method: log}}", "data.scale.method: expected one of auto, none, percentile, asinh; got 'log'"),
    ("data: {scale: {method: percentile, clip: [99, 1]}}", "data.scale.clip: expected [low, high] percentiles with low < high, got [99.0, 1.0]"),
    ("data: {scale: {clip: [1, 101]}}", "data.scale.clip.1: must be <= 100.0, got 101"),
    ("data: {scale: {softening: 0}}", "data.scale.softening: must be >= 0.0001, got 0.0"),
    ("data: {nan: mean}", "data.nan: expected one of error, zero, median; got 'mean' (did you mean median?)"),
    ("data: {fits: {hdu: -1}}", "data.fits.hdu: expected an HDU index >= 0 (0 is the primary) or an extension name, got -1"),
    ("data: {fits: {extension: 1}}", "data.fits.extension: unknown key (valid keys: hdu)"),
    ("data: {source: hdf5, hdf5: {images: images, labels: ans}}", "data.path: data.source is hdf5: set data.path to the .h5 file"),
    ("data: {source: hdf5, path: g.h5, hdf5: {images: images}}", "data.hdf5.labels: data.source is hdf5: name the labels dataset in the file, e.g. ans"),
    ("data: {source: hdf5, path: g.h5, hdf5: {images: i, labels: l, class_names: [a, a]}}", "data.hdf5.class_names: expected at least 2 distinct"),
])
def test_recipe_errors_name_key_and_value(yaml_text, message):
    with pytest.raises(RecipeError) as e:
        recipe_lib.loads(yaml_text + "\nmodel: {backbone: resnet50, weights: none}\n", "r.yaml")
    assert message in str(e.value), str(e.value)


def test_recipe_round_trip_and_overrides():
    r = recipe_lib.loads("data: {scale: {method: asinh, softening: 0.05}, nan: median, fits: {hdu: SCI}}\n", "r.yaml")
    assert r.data.scale == ScaleConfig(method="asinh", clip=(0.5, 99.5), softening=0.05) and r.data.fits.hdu == "SCI"
    assert recipe_lib.loads(recipe_lib.dump(r)) == r
    r2 = recipe_lib.replace(r, ["data.scale.method=percentile", "data.fits.hdu=1", "data.hdf5.class_names=[x, y]"])
    assert r2.data.scale.method == "percentile" and r2.data.fits.hdu == 1 and r2.data.hdf5.class_names == ("x", "y")


# ------------------------------------------------------------------ tool and CLI run


def test_export_synthetic_fits_then_train_records_nan_and_scaling(tmp_path):
    """tools/export_synthetic.py --format fits writes float 5-band cutouts with NaN; one tiny
    training run over them records the NaN policy, counts and scaling in run.json and export.json,
    and predict reads the .fz files (NaN included)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERAS_TL_FAULT", None)
    out = subprocess.run([sys.executable, os.path.join(REPO, "tools", "export_synthetic.py"), "--out", str(tmp_path / "d"),
                          "--count", "40", "--seed", "3", "--image-size", "32", "--format", "fits", "--output", "float",
                          "--bands", "5", "--mask-fraction", "0.01", "--compress", "fz"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    files = sorted(str(p) for p in (tmp_path / "d").rglob("*.fz"))
    assert len(files) == 40
    raw = {
        "name": "fits", "seed": 0,
        "data": {"source": "directory", "path": str(tmp_path / "d"), "image_size": [32, 32], "channels": 5, "batch_size": 8,
                 "val_fraction": 0.25, "test_fraction": 0.0, "nan": "median", "scale": {"method": "auto"},
                 "augment": {"flip": True, "rot90": False}},
        "model": {"backbone": "mobilenetv3small", "weights": "none", "cut_after": "block2"},
        "train": {"tensorboard": False, "phases": [{"name": "head", "trainable": "head", "epochs": 1}]},
        "export": {"backbone_weights": False},
    }
    (tmp_path / "r.yaml").write_text(recipe_lib.dump(recipe_lib.from_dict(raw)))
    wd = tmp_path / "wd"
    run = subprocess.run([sys.executable, "-m", "keras_tl.train", "--recipe", str(tmp_path / "r.yaml"), "--workdir", str(wd)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.load(open(wd / "run.json"))["data"]
    assert info["nan"]["policy"] == "median" and info["nan"]["examples_with_nan"] > 30 and info["nan"]["nan_pixels"] > 300
    assert info["scale"]["method"] == scale.AUTO_FLOAT and info["scale"]["requested"] == "auto"
    exp = export.read_export(str(wd / "export"))
    assert exp["input"]["transform"] == info["input_transform"] and exp["input"]["transform"]["nan"] == "median"
    results = list(predict.classify(predict.Predictor(str(wd / "export")), files[:2], top_k=1))
    assert [(path, err) for path, _, err in results] == [(files[0], None), (files[1], None)]
