"""HDF5 catalogues: one file holding an image array and a label array, read in blocks.

``data.source: hdf5``, ``data.path: file.h5``, ``data.hdf5: {images, labels, class_names}``.
Galaxy10 DECaLS is such a file (``images`` (17736, 256, 256, 3) uint8, ``ans`` labels, 2.7 GB).
Images are never read whole: the pipeline reads the rows of a split in blocks of at most
:data:`BLOCK_BYTES` (one h5py read per block: a contiguous slice when the block's rows are dense,
a point selection otherwise) and yields them in the split's order. Labels (N small integers) are
read whole.
"""

from __future__ import annotations

import os
from typing import Iterator, List, Optional, Tuple

import numpy as np

from keras_tl.errors import DataError

# Upper bound on the image bytes held by one read (a Galaxy10 block: 170 rows of 196,608 bytes).
BLOCK_BYTES = 32 << 20


def _open(path: str):
    import h5py

    if "://" in path:
        raise DataError(f"data.path: {path}: HDF5 files are read with h5py, which needs a local file; copy it to local disk first")
    if not os.path.exists(path):
        raise DataError(f"data.path: {path} does not exist; expected an HDF5 file (.h5)")
    if os.path.isdir(path):
        raise DataError(f"data.path: {path} is a folder; data.source: hdf5 reads one HDF5 file (use data.source: directory for class folders)")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"data.path: {path} is not a readable HDF5 file ({' '.join(str(e).split())[:160]})") from None


def _dataset(f, key: str, what: str, path: str):
    import h5py

    if key not in f:
        names: List[str] = []
        f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
        raise DataError(f"data.hdf5.{what}: {path} has no dataset {key!r}; its datasets are {', '.join(names[:20]) or '(none)'}")
    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"data.hdf5.{what}: {key!r} in {path} is a group, not a dataset")
    return obj


def _decode(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _class_names(f, labels_ds, spec, labels: np.ndarray, path: str) -> Tuple[Tuple[str, ...], str]:
    """(class names, where they came from)."""
    top = int(labels.max()) if labels.size else -1
    if spec is None:
        return tuple(str(i) for i in range(top + 1)), "the label values (data.hdf5.class_names not set)"
    if isinstance(spec, str):
        for owner, where in ((labels_ds, f"attribute {spec!r} of {labels_ds.name}"), (f, f"attribute {spec!r} of the file")):
            if spec in owner.attrs:
                value = owner.attrs[spec]
                names = [_decode(v) for v in np.atleast_1d(value).tolist()]
                break
        else:
            have = sorted(set(labels_ds.attrs) | set(f.attrs))
            raise DataError(f"data.hdf5.class_names: no attribute {spec!r} on {labels_ds.name} or the file {path} "
                            f"(attributes: {', '.join(have) or 'none'}); give the names as a list instead")
        if len(names) < 2 or len(set(names)) != len(names) or any(not n or "\n" in n for n in names):
            raise DataError(f"data.hdf5.class_names: {where} holds {names[:12]!r}; expected at least 2 distinct, non-empty names")
    else:
        names, where = list(spec), "data.hdf5.class_names"
    if top >= len(names):
        row = int(np.argmax(labels >= len(names)))
        raise DataError(f"data.hdf5.labels: row {row} of {labels_ds.name} has label {int(labels[row])} but {where} lists {len(names)} classes")
    return tuple(names), where


def inspect(data) -> dict:
    """Check the file against ``data`` (a DataConfig) and return what the source needs: ``n``,
    ``image_shape`` (H, W, C), ``dtype``, ``labels``, ``class_names``, ``class_names_from``, ``chunks``."""
    cfg = data.hdf5
    path = data.path
    with _open(path) as f:
        images = _dataset(f, cfg.images, "images", path)
        labels_ds = _dataset(f, cfg.labels, "labels", path)
        shape = tuple(int(s) for s in images.shape)
        if len(shape) not in (3, 4):
            raise DataError(f"data.hdf5.images: {cfg.images!r} in {path} has shape {shape}; expected (N, H, W) or (N, H, W, C)")
        if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
            raise DataError(f"data.hdf5.images: {cfg.images!r} in {path} holds {images.dtype} values; expected integers or floats")
        if labels_ds.ndim != 1 and not (labels_ds.ndim == 2 and labels_ds.shape[1] == 1):
            raise DataError(f"data.hdf5.labels: {cfg.labels!r} in {path} has shape {labels_ds.shape}; expected (N,) class indices")
        if not np.issubdtype(labels_ds.dtype, np.integer):
            raise DataError(f"data.hdf5.labels: {cfg.labels!r} in {path} holds {labels_ds.dtype} values; expected integer class indices")
        if labels_ds.shape[0] != shape[0]:
            raise DataError(f"data.hdf5.labels: {cfg.labels!r} has {labels_ds.shape[0]} entries but {cfg.images!r} has {shape[0]} images in {path}")
        labels = np.asarray(labels_ds[()]).reshape(-1).astype(np.int64)  # N small integers, not images
        if shape[0] == 0:
            raise DataError(f"data.hdf5.images: {cfg.images!r} in {path} holds no images")
        if labels.min() < 0:
            row = int(np.argmin(labels))
            raise DataError(f"data.hdf5.labels: row {row} of {cfg.labels!r} has label {int(labels[row])}; expected class indices >= 0")
        names, where = _class_names(f, labels_ds, cfg.class_names, labels, path)
        chunks = images.chunks
        dtype = images.dtype.name
    if len(names) < 2:
        raise DataError(f"data.hdf5.labels: {path} has a single class; a classifier needs at least 2")
    counts = np.bincount(labels, minlength=len(names))
    if (counts == 0).any():
        k = int(np.argmin(counts))
        raise DataError(f"data.hdf5.labels: class {names[k]!r} (label {k}) has no images in {path}")
    hwc = shape[1:] if len(shape) == 4 else (*shape[1:], 1)
    return {"n": shape[0], "image_shape": tuple(hwc), "squeeze": len(shape) == 3, "dtype": dtype, "labels": labels,
            "class_names": names, "class_names_from": where, "chunks": chunks}


def block_rows(image_shape, itemsize: int, budget: Optional[int] = None) -> int:
    """Rows per read so that one block holds at most ``budget`` bytes (at least 1 row)."""
    budget = BLOCK_BYTES if budget is None else budget
    row = int(np.prod(image_shape)) * int(itemsize)
    return max(1, budget // max(row, 1))


def read_rows(dset, rows: np.ndarray) -> np.ndarray:
    """``dset[rows]`` for strictly increasing ``rows``: one contiguous slice when they fill at
    least half of their span (cheaper for chunked, compressed files), else a point selection."""
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 <= 2 * len(rows):
        block = dset[first : last + 1]
        return block[rows - first]
    return dset[rows]


def iter_blocks(path: str, key: str, rows: np.ndarray, block: int) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(start, images)``: the images of ``rows[start:start + len(images)]`` in that order."""
    with _open(path) as f:
        dset = f[key]
        for start in range(0, len(rows), block):
            want = np.asarray(rows[start : start + block], np.int64)
            order = np.argsort(want, kind="stable")
            got = read_rows(dset, want[order])
            out = np.empty_like(got)
            out[order] = got
            yield start, out


def element_dataset(path: str, key: str, rows: np.ndarray, labels: np.ndarray, info: dict):
    """(image [H, W, C] in the file's dtype, label int32) for ``rows``, in that order, streamed."""
    import tensorflow as tf

    h, w, c = info["image_shape"]
    dtype = np.dtype(info["dtype"])
    block = block_rows(info["image_shape"], dtype.itemsize)
    rows = np.asarray(rows, np.int64)
    labels = np.asarray(labels, np.int32)
    squeeze = info["squeeze"]

    def gen():
        for start, images in iter_blocks(path, key, rows, block):
            if squeeze:
                images = images[..., None]
            for j in range(len(images)):
                yield images[j], labels[start + j]

    return tf.data.Dataset.from_generator(
        gen, output_signature=(tf.TensorSpec((h, w, c), tf.as_dtype(dtype)), tf.TensorSpec((), tf.int32)))


def scan(path: str, key: str, info: dict, data) -> Tuple[List[dict], dict]:
    """Bad rows of a float image array (NaN under ``data.nan: error``, inf, an all-NaN band under
    ``median``) as ``[{"path": "file.h5:images[i]", "reason"}]``, and the NaN count per row that has
    any. Integer arrays hold no NaN and are not read. Reads block by block, like training."""
    from keras_tl.data import scale as scale_lib

    if not np.issubdtype(np.dtype(info["dtype"]), np.floating):
        return [], {}
    rows = np.arange(info["n"], dtype=np.int64)
    block = block_rows(info["image_shape"], np.dtype(info["dtype"]).itemsize)
    bad, nans = [], {}
    for start, images in iter_blocks(path, key, rows, block):
        if info["squeeze"]:
            images = images[..., None]
        for j, img in enumerate(images):
            reason, n_nan = scale_lib.array_problem(img, data)
            name = f"{path}:{key}[{start + j}]"
            if n_nan:
                nans[name] = n_nan
            if reason:
                bad.append({"path": name, "row": start + j, "reason": reason})
    return bad, nans
