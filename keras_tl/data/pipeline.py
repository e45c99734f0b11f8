"""The tf.data pipeline: source → split/subset → decode → NaN policy → resize → input
transform → cache → shuffle → augment (train only) → batch → prefetch, plus the pre-training
bad-file scan.

Images leave the pipeline as float32 ``[B, H, W, C]`` with exactly ``data.channels`` channels, in
pixel units: 8-bit images as they are (0..255), float data (arrays, FITS, HDF5, synthetic
fluxes) after ``data.nan`` and ``data.scale`` (:mod:`keras_tl.data.scale`, the same function the
export applies); labels as int32 ``[B]``. Model-specific preprocessing is the model's job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from keras_tl.data import augment as augment_lib
from keras_tl.data import fits as fits_lib
from keras_tl.data import scale as scale_lib
from keras_tl.data import split as split_lib
from keras_tl.data.sources import Pool, Source, load_source
from keras_tl.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class Datasets:
    """What :func:`build_datasets` returns. ``val``/``test`` are None when the split is empty
    (no source split and its fraction is 0)."""

    train: tf.data.Dataset
    val: Optional[tf.data.Dataset]
    test: Optional[tf.data.Dataset]
    class_names: Tuple[str, ...]
    counts: Dict[str, int]
    class_counts: Dict[str, List[int]]
    class_weights: Optional[Dict[int, float]]
    info: dict
    # The train split in its pool order: unshuffled, unaugmented, uncached, deterministic. What a
    # single pass over the training images should read (the frozen-backbone fast path), so its
    # result depends neither on tf.data's parallelism nor on how often ``train`` was iterated.
    train_in_order: Optional[tf.data.Dataset] = None
    # What the export applies to its input (data.nan + resolved data.scale); see keras_tl.data.scale.
    input_transform: dict = dataclasses.field(default_factory=scale_lib.identity)
    # Val (else train) images, unbatched, in pool order, *before* the input transform: what an
    # exported SavedModel takes (raw fluxes at the model's input size).
    serving_images: Optional[tf.data.Dataset] = None

    def serving_samples(self, n: int = 8) -> np.ndarray:
        """The first ``n`` :attr:`serving_images` as float32 [n, H, W, C] (export verification)."""
        return np.stack([x.numpy() for x, _ in self.serving_images.take(n)])


# -------------------------------------------------------------------- decoding


def _read_bytes(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def load_array(path: str, image_key: str = "image", keep_dtype: bool = False) -> np.ndarray:
    """A .npy/.npz file as a float32 (H, W, C) array (2-D arrays get C=1; ``keep_dtype``: as stored)."""
    arr = np.load(io.BytesIO(_read_bytes(path)), allow_pickle=False)
    if isinstance(arr, np.lib.npyio.NpzFile):
        with arr:
            if image_key in arr.files:
                arr = arr[image_key]
            elif len(arr.files) == 1:
                arr = arr[arr.files[0]]
            else:
                raise ValueError(f"npz holds arrays {arr.files}; name the image array {image_key!r} (data.image_key)")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"array has shape {arr.shape}, expected (H, W) or (H, W, C)")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"array dtype {arr.dtype} is not real numbers")
    return arr if keep_dtype else arr.astype(np.float32)


def _decode_file(path: tf.Tensor, file_kind: str, channels: int, image_key: str, hdu=None) -> tf.Tensor:
    if file_kind == "array":
        img = tf.numpy_function(lambda p: load_array(p.decode("utf-8"), image_key), [path], tf.float32, stateful=False)
        return tf.ensure_shape(img, [None, None, channels])
    if file_kind == "fits":
        img = tf.numpy_function(lambda p: fits_lib.load(p.decode("utf-8"), hdu), [path], tf.float32, stateful=False)
        return tf.ensure_shape(img, [None, None, channels])
    img = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    return tf.cast(img, tf.float32)


def adapt_channels(image: tf.Tensor, native: int, channels: int) -> tf.Tensor:
    """Convert a decoded image with ``native`` channels to ``channels`` (1↔3, drop alpha)."""
    if native == channels:
        return image
    if native in (2, 4):
        image, native = image[..., : native - 1], native - 1
    if native == 1 and channels == 3:
        return tf.image.grayscale_to_rgb(image)
    if native == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(image)
    if native == channels:
        return image
    raise DataError(f"data.channels: cannot convert {native}-channel images to {channels}; set data.channels: {native}")


def resize(image: tf.Tensor, size: Tuple[int, int], mode: str) -> tf.Tensor:
    """``resize``: bilinear to size (aspect not kept); ``pad``: keep aspect, zero-pad;
    ``center_crop``: the central size×size window at the original pixel scale (an image
    smaller than size is zero-padded; directory sources reject such files in the scan)."""
    h, w = int(size[0]), int(size[1])
    if mode == "resize":
        image = tf.image.resize(image, (h, w))
    elif mode == "pad":
        image = tf.image.resize_with_pad(image, h, w)
    elif mode == "center_crop":
        image = tf.image.resize_with_crop_or_pad(image, h, w)
    else:
        raise DataError(f"data.resize: unknown mode {mode!r}; valid: resize, pad, center_crop")
    return tf.ensure_shape(tf.cast(image, tf.float32), [h, w, None])


# ------------------------------------------------------------------------ scan

def _bad_image_reason(path: str) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        data = _read_bytes(path)
    except Exception as e:  # noqa: BLE001 - any read failure is the reason
        return f"unreadable: {' '.join(str(e).split())[:120]}"
    if not data:
        return "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except UnidentifiedImageError:
        return f"not an image ({len(data)} bytes that no image decoder recognises)"
    except Exception as e:  # noqa: BLE001 - PIL raises OSError/SyntaxError/... for corrupt data
        return f"truncated or corrupt image: {' '.join(str(e).split())[:120]}"
    return "the TensorFlow image decoder cannot read it (unsupported format or channel count)"


def _scan_images(paths: List[str], data) -> List[dict]:
    """Decode every image once in a parallel tf.data map; return the bad ones with a reason."""
    channels = data.channels
    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), tf.constant(paths)))

    def check(i, p):
        img = tf.io.decode_image(tf.io.read_file(p), channels=channels, expand_animations=False)
        return i, tf.shape(img)[:2]

    ds = ds.map(check, num_parallel_calls=AUTOTUNE, deterministic=False).ignore_errors().batch(1024)
    ok, shapes = set(), {}
    for idx, hw in ds.as_numpy_iterator():
        for i, s in zip(idx.tolist(), hw.tolist()):
            ok.add(i)
            shapes[i] = s
    bad = [{"path": paths[i], "reason": _bad_image_reason(paths[i])} for i in range(len(paths)) if i not in ok]
    bad += _too_small(paths, shapes, data)
    return bad


def _too_small(paths, shapes, data) -> List[dict]:
    if data.resize != "center_crop":
        return []
    th, tw = data.image_size
    out = []
    for i, (h, w) in sorted(shapes.items()):
        if h < th or w < tw:
            out.append(
                {
                    "path": paths[i],
                    "reason": f"{w}x{h} px is smaller than data.image_size {th}x{tw} with data.resize: center_crop "
                    f"(use data.resize: pad or resize, or a smaller image_size)",
                }
            )
    return out


def _scan_arrays(paths: List[str], data, file_kind: str) -> Tuple[List[dict], Dict[str, int], List[str], List[int]]:
    """(bad files, NaN count per file that has any, distinct dtypes of the readable files, FITS HDUs read)."""
    def check(i):
        hdu = None
        try:
            if file_kind == "fits":
                with tf.io.gfile.GFile(paths[i], "rb") as f:
                    arr, hdu, _ = fits_lib.read_fits(f.read(), data.fits.hdu)
            else:
                arr = load_array(paths[i], data.image_key, keep_dtype=True)
        except fits_lib.FitsError as e:
            return i, None, str(e), 0, None, None
        except Exception as e:  # noqa: BLE001 - a corrupt array file is reported, not raised
            return i, None, f"unreadable array: {' '.join(str(e).split())[:160] or type(e).__name__}", 0, None, None
        reason, n_nan = scale_lib.array_problem(arr, data)
        return i, arr.shape[:2], reason, n_nan, arr.dtype.name, hdu

    bad, shapes, nans, dtypes, hdus = [], {}, {}, set(), set()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for i, hw, reason, n_nan, dtype, hdu in pool.map(check, range(len(paths))):
            if n_nan:
                nans[paths[i]] = n_nan
            if reason:
                bad.append({"path": paths[i], "reason": reason})
            else:
                shapes[i] = hw
                dtypes.add(dtype)
                if hdu is not None:
                    hdus.add(hdu)
    return bad + _too_small(paths, shapes, data), nans, sorted(dtypes), sorted(hdus)


def _scan_hdf5(source: Source, data) -> dict:
    from keras_tl.data import hdf5

    t0 = time.perf_counter()
    bad, nans = hdf5.scan(data.path, data.hdf5.images, source.hdf5, data)
    note = None if np.issubdtype(np.dtype(source.hdf5["dtype"]), np.floating) else f"{source.hdf5['dtype']} images hold no NaN: not read"
    return {"checked": source.hdf5["n"] if note is None else 0, "bad": bad, "nan_counts": nans,
            "dtypes": [source.hdf5["dtype"]], "seconds": round(time.perf_counter() - t0, 3),
            **({"note": note} if note else {})}


def _scan_source(source: Source, data) -> dict:
    if source.kind == "hdf5":
        result = _scan_hdf5(source, data)
        total, unit = source.hdf5["n"], "images"
    elif source.kind != "files":
        return {"checked": 0, "bad": [], "skipped_files": [], "nan_counts": {}, "seconds": 0.0,
                "note": f"{source.kind} data are not scanned"}
    else:
        paths = source.pools["train"].paths
        t0 = time.perf_counter()
        if source.file_kind == "image":
            bad, nans, dtypes, hdus = _scan_images(paths, data), {}, ["uint8"], []
        else:
            bad, nans, dtypes, hdus = _scan_arrays(paths, data, source.file_kind)
        bad.sort(key=lambda b: b["path"])
        result = {"checked": len(paths), "bad": bad, "nan_counts": nans, "dtypes": dtypes,
                  "seconds": round(time.perf_counter() - t0, 3), **({"fits_hdus": hdus} if source.file_kind == "fits" else {})}
        total, unit = len(paths), "files"
    if result["bad"] and data.on_bad_file == "error":
        first = result["bad"][0]
        raise DataError(
            f"data.path: bad file {first['path']}: {first['reason']} ({len(result['bad'])} bad of {total} {unit}); "
            f"fix or remove it, or set data.on_bad_file: skip to drop bad files (they are listed in run.json)"
        )
    return {**result, "skipped_files": list(result["bad"])}


def scan(recipe) -> dict:
    """Decode every file of a directory source once, before training.

    Returns ``{"checked": n, "bad": [{"path", "reason"}], "skipped_files": (same list),
    "nan_counts": {path: NaN pixels}, "dtypes": [...], "seconds": s}``. With
    ``data.on_bad_file: error`` any bad file raises DataError naming the first one
    and the count; with ``skip`` they are returned (build_datasets drops them).
    A file with NaN pixels is bad under ``data.nan: error``. An HDF5 source is read block by
    block (float images only; an image is named ``file.h5:images[row]``). TFDS and synthetic
    sources are not scanned (``checked`` is 0).
    """
    return _scan_source(load_source(recipe.data), recipe.data)


# ---------------------------------------------------------------------- splits


def _make_splits(source: Source, data) -> Tuple[Dict[str, Pool], dict]:
    """Carve missing val/test from train, then subset train; also the provenance notes."""
    pools = dict(source.pools)
    origin = {s: "source" for s in pools}
    carve_val = "val" not in pools
    carve_test = "test" not in pools
    if carve_val or carve_test:
        train = pools["train"]
        parts = split_lib.stratified_split(
            train.ids,
            train.labels,
            val_fraction=data.val_fraction if carve_val else 0.0,
            test_fraction=data.test_fraction if carve_test else 0.0,
            seed=data.split_seed,
            class_names=source.class_names,
        )
        pools["train"] = train.select(parts["train"])
        for s, carve in (("val", carve_val), ("test", carve_test)):
            if carve:
                pools[s] = train.select(parts[s])
                origin[s] = f"carved from {origin['train']} train: {s}_fraction={getattr(data, s + '_fraction')}, split_seed={data.split_seed}"
    if data.fraction is not None or data.per_class is not None:
        train = pools["train"]
        keep = split_lib.nested_subset(train.ids, train.labels, seed=data.split_seed, fraction=data.fraction, per_class=data.per_class)
        pools["train"] = train.select(keep)
        origin["train"] += f"; nested subset fraction={data.fraction} per_class={data.per_class} (split_seed={data.split_seed})"
    return pools, origin


# -------------------------------------------------------------------- pipeline


def to_input_size(image: tf.Tensor, size: Tuple[int, int], mode: str, nan: str) -> tf.Tensor:
    """A decoded image at the model's input size: NaN pixels filled first under ``nan`` (zero |
    median; a bilinear resize would spread them), then :func:`resize`. keras_tl.predict calls this."""
    if nan != "error":
        image = scale_lib.fill_nan(image, nan)
    return resize(image, size, mode)


def _element_dataset(source: Source, pool: Pool, data, full_size: Dict[str, int], ordered: bool) -> tf.data.Dataset:
    """(image float32 [H, W, C] at the input size, before the input transform, label int32) per
    example, unbatched; ``ordered`` keeps the pool's order even under data.deterministic: false."""
    det = True if ordered else None
    size, mode, ch, nan = tuple(data.image_size), data.resize, data.channels, data.nan
    labels = pool.labels.astype(np.int32)
    if source.kind == "files":
        ds = tf.data.Dataset.from_tensor_slices((tf.constant(pool.paths, tf.string), labels))
        fk, key, hdu = source.file_kind, data.image_key, data.fits.hdu
        return ds.map(
            lambda p, y: (to_input_size(_decode_file(p, fk, ch, key, hdu), size, mode, nan), y),
            num_parallel_calls=AUTOTUNE,
            deterministic=det,
        )
    if source.kind == "hdf5":
        from keras_tl.data import hdf5

        ds = hdf5.element_dataset(data.path, data.hdf5.images, pool.indices, labels, source.hdf5)
        native = source.native_channels
        return ds.map(
            lambda x, y: (to_input_size(adapt_channels(tf.cast(x, tf.float32), native, ch), size, mode, nan), y),
            num_parallel_calls=AUTOTUNE,
            deterministic=det,
        )
    if source.kind == "synthetic":
        from keras_tl.data import synthetic

        cfg = data.synthetic
        gen_size = size[0] if size[0] == size[1] else max(size)
        try:
            images, gen_labels = synthetic.generate(
                pool.indices, seed=cfg.seed, image_size=gen_size, survey=cfg.survey, bands=ch, output=cfg.output, noise_scale=cfg.noise_scale
            )
        except ValueError as e:
            raise DataError(f"data.synthetic: {' '.join(str(e).split())}") from None
        if not np.array_equal(np.asarray(gen_labels, np.int64), pool.labels):
            raise RuntimeError("synthetic.generate labels disagree with synthetic.label_of")  # a bug, not user input
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        same = tuple(images.shape[1:3]) == size
        return ds.map(
            lambda x, y: (tf.cast(x, tf.float32) if same else resize(tf.cast(x, tf.float32), size, mode), y),
            num_parallel_calls=AUTOTUNE,
            deterministic=det,
        )
    # tfds
    import tensorflow_datasets as tfds

    ds = source.builder.as_dataset(
        split=pool.tfds_split, shuffle_files=False, read_config=tfds.ReadConfig(add_tfds_id=True, try_autocache=False)
    )
    if len(pool) != full_size[pool.tfds_split]:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(pool.ids, tf.string), tf.ones(len(pool), tf.int32)), 0
        )
        ds = ds.filter(lambda ex: table.lookup(ex["tfds_id"]) > 0)
    native, ik, lk = source.native_channels, data.image_key, data.label_key
    return ds.map(
        lambda ex: (
            resize(adapt_channels(tf.cast(ex[ik], tf.float32), native, ch), size, mode),
            tf.cast(ex[lk], tf.int32),
        ),
        num_parallel_calls=AUTOTUNE,
        deterministic=det,
    )


def _finish(ds, split, n, data, *, ordered, seed, batch_size, drop_remainder, train_aug, shuffle, clip_max, cache_tag,
            cache=True):
    if cache and data.cache == "memory":
        ds = ds.cache()
    elif cache and data.cache != "none":
        prefix = f"{data.cache}.{split}.{cache_tag}"
        parent = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if parent and not tf.io.gfile.exists(parent):
            tf.io.gfile.makedirs(parent)
        locks = tf.io.gfile.glob(prefix + "*.lockfile")
        if locks:
            raise DataError(
                f"data.cache: lock file {locks[0]} exists: another run is writing this cache, or a killed run left it; "
                f"delete it if no run is using {data.cache}"
            )
        ds = ds.cache(prefix)
    if shuffle:
        ds = ds.shuffle(min(data.shuffle_buffer, max(n, 1)), seed=seed, reshuffle_each_iteration=True)
    if train_aug:
        fn = augment_lib.make_augment(data.augment, data.image_size, clip_max)
        seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2, drop_remainder=True)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda xy, s: (fn(xy[0], s), xy[1]), num_parallel_calls=AUTOTUNE
        )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    ds = ds.prefetch(AUTOTUNE)
    opts = tf.data.Options()
    # Evaluation order must be stable (predictions and labels may be read in two passes).
    opts.deterministic = bool(data.deterministic or ordered)
    return ds.with_options(opts)


def _drop_bad_files(source: Source, skipped: List[dict]) -> None:
    """Remove the scan's bad files (data.on_bad_file: skip) from the train pool, in place."""
    pool = source.pools["train"]
    if source.kind == "hdf5":
        drop_rows = {b["row"] for b in skipped}
        keep = np.asarray([i for i, r in enumerate(pool.indices.tolist()) if r not in drop_rows], np.int64)
    else:
        drop = {b["path"] for b in skipped}
        keep = np.asarray([i for i, p in enumerate(pool.paths) if p not in drop], np.int64)
    if len(keep) == 0:
        raise DataError(f"data.path: all {len(pool)} files are bad (first: {skipped[0]['path']}: {skipped[0]['reason']})")
    pool = pool.select(keep)
    empty = [c for i, c in enumerate(source.class_names) if not np.any(pool.labels == i)]
    if empty:
        raise DataError(f"data.path: class {empty[0]!r} has no readable files after skipping bad ones; see the bad-file list")
    source.pools["train"] = pool


def _split_counts(source: Source, pools: Dict[str, Pool], batch_size: int, drop_remainder: bool):
    """(counts, class_counts, hashes) of the non-empty splits; DataError for an empty train split or,
    with static shapes, a split smaller than one batch."""
    k = len(source.class_names)
    counts, class_counts, hashes = {}, {}, {}
    for s in SPLITS:
        if s in pools and len(pools[s]):
            counts[s] = len(pools[s])
            class_counts[s] = split_lib.class_counts(pools[s].labels, k)
            hashes[s] = split_lib.split_hash(pools[s].ids)
    if "train" not in counts:
        raise DataError(f"{source.description}: the train split is empty")
    if drop_remainder:
        for s, n in counts.items():
            if n < batch_size:
                raise DataError(
                    f"data.batch_size: the {s} split has {n} examples, fewer than the global batch size {batch_size}; "
                    f"with static shapes (TPU) every batch must be full: lower data.batch_size or add data"
                )
    return counts, class_counts, hashes


def _data_info(source: Source, data, scan_result: dict, origin: dict, counts: dict, hashes: dict, *,
               batch_size: int, drop_remainder: bool, augment: bool, transform: dict) -> dict:
    """Datasets.info: what was read, split, skipped, scaled (written to run.json)."""
    nan_counts = scan_result.get("nan_counts", {})
    info = {
        "source": source.description,
        "split_hash": hashes,
        "split_origin": {s: origin[s] for s in counts},
        "skipped_files": scan_result["bad"],
        "ignored_files": source.ignored_files[:100],
        "num_ignored_files": len(source.ignored_files),
        "scan": {k_: v for k_, v in scan_result.items() if k_ not in ("bad", "skipped_files", "nan_counts")},
        "batch_size": batch_size,
        "drop_remainder": drop_remainder,
        "augment": bool(augment and augment_lib.is_active(data.augment)),
        "nan": {
            "policy": data.nan,
            "checked": scan_result["checked"],
            "examples_with_nan": len(nan_counts),
            "nan_pixels": int(sum(nan_counts.values())),
            "examples": [{"path": k, "nan_pixels": v} for k, v in sorted(nan_counts.items())[:100]],
        },
        "scale": scale_lib.describe(data, source.eight_bit),
        "input_transform": transform,
    }
    if source.kind == "files" and source.file_kind == "fits":
        info["fits_hdu"] = {"requested": data.fits.hdu if data.fits.hdu is not None else "first HDU with image data",
                            "read": scan_result.get("fits_hdus", [])}
    return info


def build_datasets(
    recipe,
    *,
    global_batch_size: Optional[int] = None,
    drop_remainder: bool = False,
    augment: bool = True,
    shuffle: bool = True,
    scanned: Optional[dict] = None,
) -> Datasets:
    """Train/val/test datasets for ``recipe`` (see the module docstring for the element format).

    ``global_batch_size`` overrides ``data.batch_size`` (the runtime passes per-replica ×
    replicas). Bad files are found before any dataset is built (see :func:`scan`).
    Augmentation and shuffling apply to train only, seeded from ``recipe.seed``. ``scanned``:
    :func:`scan`'s result for this recipe, when the caller has it (the files are not read again).
    """
    data = recipe.data
    source = load_source(data)
    scan_result = scanned if scanned is not None else _scan_source(source, data)
    if scan_result["bad"]:
        _drop_bad_files(source, scan_result["bad"])
    if source.kind == "files" and source.file_kind in ("array", "fits"):
        # Arrays and FITS hold whatever dtype was stored; all-uint8 files are 8-bit pixels.
        source.eight_bit = scan_result.get("dtypes") == ["uint8"]
    transform = scale_lib.resolve(data, source.eight_bit)
    transform_tag = hashlib.sha256(json.dumps(transform, sort_keys=True).encode()).hexdigest()[:8]
    full_size = {p.tfds_split: len(p) for p in source.pools.values() if p.tfds_split}
    pools, origin = _make_splits(source, data)
    batch_size = int(global_batch_size or data.batch_size)
    if batch_size < 1:
        raise DataError(f"global_batch_size: must be >= 1, got {batch_size}")
    counts, class_counts, hashes = _split_counts(source, pools, batch_size, drop_remainder)
    # Scaled data are in 0..255 like 8-bit pixels: augmentation clips to that range too.
    clip_max = 255.0 if source.eight_bit or transform["scale"]["method"] != "none" else None
    out = {s: None for s in SPLITS}
    train_in_order = None
    serving = {}
    for i, s in enumerate(SPLITS):
        if s not in counts:
            continue
        is_train = s == "train"
        ordered = not (is_train and shuffle)
        raw = _element_dataset(source, pools[s], data, full_size, ordered)
        serving[s] = raw
        ds = raw.map(lambda x, y: (scale_lib.apply(x, transform), y), num_parallel_calls=AUTOTUNE,
                     deterministic=True if ordered else None)
        common = dict(seed=int(recipe.seed) * 7 + i, batch_size=batch_size, drop_remainder=drop_remainder, clip_max=clip_max,
                      cache_tag=f"{hashes[s]}-{data.image_size[0]}x{data.image_size[1]}-{data.resize}-{data.channels}-{transform_tag}")
        train_aug = is_train and augment and augment_lib.is_active(data.augment)
        out[s] = _finish(ds, s, counts[s], data, ordered=ordered, train_aug=train_aug, shuffle=is_train and shuffle, **common)
        if is_train:
            # Same element dataset (images are not generated or listed twice); the element map
            # follows the options, which _finish makes deterministic for an ordered dataset.
            train_in_order = out[s] if ordered and not train_aug else _finish(
                ds, s, counts[s], data, ordered=True, train_aug=False, shuffle=False, cache=False, **common)
    class_weights = split_lib.balanced_class_weights(class_counts["train"]) if data.class_weights else None
    info = _data_info(source, data, scan_result, origin, counts, hashes, batch_size=batch_size,
                      drop_remainder=drop_remainder, augment=augment, transform=transform)
    return Datasets(
        train=out["train"],
        val=out["val"],
        test=out["test"],
        class_names=tuple(source.class_names),
        counts=counts,
        class_counts=class_counts,
        class_weights=class_weights,
        info=info,
        train_in_order=train_in_order,
        input_transform=transform,
        serving_images=serving.get("val", serving["train"]),
    )
