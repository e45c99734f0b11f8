"""Data sources: what examples exist, their labels and stable ids, before any decoding.

A source turns ``recipe.data`` into :class:`Source`: class names plus one
:class:`Pool` per split the source itself provides (always ``train``; ``val`` /
``test`` when the source has them). Splitting, subsetting and decoding happen
elsewhere; ids are what split hashes and nested subsets are computed from.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import posixpath
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from keras_tl.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
ARRAY_EXTS = (".npy", ".npz")
FITS_EXTS = (".fits", ".fits.gz", ".fz")
KNOWN_EXTS = IMAGE_EXTS + ARRAY_EXTS + FITS_EXTS


@dataclasses.dataclass
class Pool:
    """The examples of one split: ids (stable, unique), int labels, and a payload:
    ``paths`` (directory), ``indices`` (synthetic: example numbers; hdf5: row numbers) or ``tfds_split``."""

    ids: List[str]
    labels: np.ndarray
    paths: Optional[List[str]] = None
    indices: Optional[np.ndarray] = None
    tfds_split: Optional[str] = None

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, idx: np.ndarray) -> "Pool":
        """The sub-pool at positions ``idx`` (keeps order)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Pool(
            ids=[self.ids[i] for i in idx],
            labels=self.labels[idx],
            paths=[self.paths[i] for i in idx] if self.paths is not None else None,
            indices=self.indices[idx] if self.indices is not None else None,
            tfds_split=self.tfds_split,
        )


@dataclasses.dataclass
class Source:
    """Examples as the source provides them. ``kind``: files | synthetic | tfds | hdf5.
    ``file_kind`` (files): image | array | fits. ``eight_bit``: pixel values are 0..255 (for
    array and FITS files the pre-training scan settles it from the files' dtypes).
    ``hdf5``: what :func:`keras_tl.data.hdf5.inspect` found."""

    kind: str
    class_names: Tuple[str, ...]
    pools: Dict[str, Pool]
    description: str
    file_kind: Optional[str] = None
    eight_bit: bool = True
    ignored_files: List[str] = dataclasses.field(default_factory=list)
    builder: Any = None
    native_channels: Optional[int] = None
    hdf5: Optional[dict] = None


def load_source(data) -> Source:
    """The source named by ``data.source`` (a DataConfig)."""
    if data.source == "directory":
        return directory_source(data)
    if data.source == "tfds":
        return tfds_source(data)
    if data.source == "synthetic_galaxies":
        return synthetic_source(data)
    if data.source == "hdf5":
        return hdf5_source(data)
    raise DataError(f"data.source: unknown source {data.source!r}; valid: directory, tfds, synthetic_galaxies, hdf5")


# ------------------------------------------------------------------ directory


def _join(root: str, name: str) -> str:
    return posixpath.join(root, name) if "://" in root else os.path.join(root, name)


def directory_source(data) -> Source:
    """``data.path/<class>/**/<file>``: class names are the sorted subfolder names."""
    import tensorflow as tf

    root = data.path
    if not root:
        raise DataError("data.path: not set; point it at a folder with one subfolder per class")
    root = root.rstrip("/") if len(root) > 1 else root
    if not tf.io.gfile.exists(root):
        raise DataError(f"data.path: {root} does not exist; expected a folder with one subfolder per class")
    if not tf.io.gfile.isdir(root):
        raise DataError(f"data.path: {root} is a file; expected a folder with one subfolder per class")
    entries = sorted(e.rstrip("/") for e in tf.io.gfile.listdir(root))
    class_names = tuple(e for e in entries if not e.startswith(".") and tf.io.gfile.isdir(_join(root, e)))
    if not class_names:
        loose = [e for e in entries if e.lower().endswith(KNOWN_EXTS)]
        hint = f" (found {len(loose)} files directly in it)" if loose else ""
        raise DataError(f"data.path: {root} has no class subfolders{hint}; expected {root}/<class name>/<images>")
    odd = [c for c in class_names if not c.isprintable()]
    if odd:
        # Class names are written one per line (labels.txt) and printed; a newline would shift every label.
        raise DataError(f"data.path: class folder name {odd[0]!r} in {root} holds control characters (e.g. a newline); rename the folder")
    if len(class_names) == 1:
        raise DataError(f"data.path: {root} has a single class folder {class_names[0]!r}; a classifier needs at least 2 classes")
    ids, paths, labels, ignored = [], [], [], []
    for label, cls in enumerate(class_names):
        cdir = _join(root, cls)
        found = 0
        for dirpath, subdirs, files in tf.io.gfile.walk(cdir):
            subdirs[:] = sorted(d for d in subdirs if not d.rstrip("/").startswith("."))
            for f in sorted(files):
                full = _join(dirpath, f)
                if f.startswith("."):
                    continue
                if not f.lower().endswith(KNOWN_EXTS):
                    ignored.append(full)
                    continue
                rel = posixpath.join(cls, posixpath.relpath(full.replace("\\", "/"), cdir.replace("\\", "/")))
                ids.append(rel)
                paths.append(full)
                labels.append(label)
                found += 1
        if not found:
            raise DataError(
                f"data.path: class folder {cdir} has no images ({', '.join(KNOWN_EXTS)}); add some or remove the folder"
            )
    kinds = {}
    for p in paths:
        low = p.lower()
        kinds.setdefault("fits" if low.endswith(FITS_EXTS) else "array" if low.endswith(ARRAY_EXTS) else "image", p)
    if len(kinds) > 1:
        what = {"image": "image files", "array": ".npy/.npz arrays", "fits": "FITS files"}
        a, b = [k for k in ("image", "array", "fits") if k in kinds][:2]
        raise DataError(
            f"data.path: {root} mixes {what[a]} and {what[b]} (e.g. {kinds[b]}); their pixel units differ, convert one kind"
        )
    file_kind = next(iter(kinds)) if kinds else "image"
    if file_kind == "image" and data.channels not in (1, 3, 4):
        raise DataError(
            f"data.channels: {data.channels} but {root} holds image files (1, 3 or 4 channels); "
            f"store {data.channels}-band data as FITS cubes (C, H, W) or .npy/.npz arrays of shape (H, W, {data.channels})"
        )
    pool = Pool(ids=ids, labels=np.asarray(labels, np.int64), paths=paths)
    return Source(
        kind="files",
        class_names=class_names,
        pools={"train": pool},
        description=f"directory {root}: {len(paths)} {file_kind} files in {len(class_names)} classes",
        file_kind=file_kind,
        eight_bit=file_kind == "image",
        ignored_files=ignored,
    )


# ----------------------------------------------------------------------- tfds


def _tfds_builder(data):
    import tensorflow_datasets as tfds

    where = data.data_dir or "~/tensorflow_datasets (the TFDS default; set data.data_dir to change it)"
    try:
        builder = tfds.builder(data.name, data_dir=data.data_dir, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(data.name.split("/")[0].split(":")[0], tfds.list_builders(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DataError(f"data.name: TFDS has no dataset {data.name!r}{hint}") from None
    except Exception as e:  # noqa: BLE001 - tfds raises many types for a bad name/config/version
        raise DataError(f"data.name: cannot open TFDS dataset {data.name!r} in {where}: {' '.join(str(e).split())[:200]}") from None
    if not builder.is_prepared():
        raise DataError(
            f"data.name: TFDS dataset {data.name!r} is not prepared in {builder.data_dir if data.data_dir else where}; "
            f"prepare it on a machine with network: `tfds build {data.name} --data_dir {data.data_dir or '~/tensorflow_datasets'}` "
            f"(or python -c \"import tensorflow_datasets as tfds; tfds.builder('{data.name}', data_dir=...).download_and_prepare()\") "
            f"and copy the folder, or set data.data_dir to where it is prepared"
        )
    return builder


def _tfds_labels(builder, split: str, label_key: str) -> Tuple[List[str], np.ndarray]:
    """(tfds_id, label) of every example of ``split``, reading records without decoding images."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    decoders = {k: tfds.decode.SkipDecoding() for k in builder.info.features.keys() if k != label_key}
    ds = builder.as_dataset(
        split=split, shuffle_files=False, decoders=decoders, read_config=tfds.ReadConfig(add_tfds_id=True)
    )
    ds = ds.map(lambda ex: (ex["tfds_id"], tf.cast(ex[label_key], tf.int64))).batch(8192)
    ids, labels = [], []
    for i, l in ds.as_numpy_iterator():
        ids.extend(x.decode("utf-8") for x in i)
        labels.append(l)
    return ids, (np.concatenate(labels) if labels else np.zeros(0, np.int64))


def tfds_source(data) -> Source:
    """A prepared TFDS dataset (never downloads). Splits named by data.train/val/test_split."""
    import tensorflow_datasets as tfds

    builder = _tfds_builder(data)
    feats = builder.info.features
    keys = list(feats.keys())
    for key, what in ((data.image_key, "image_key"), (data.label_key, "label_key")):
        if key not in feats:
            raise DataError(f"data.{what}: {data.name} has no feature {key!r}; its features are {', '.join(keys)}")
    label_feat = feats[data.label_key]
    if not isinstance(label_feat, tfds.features.ClassLabel):
        raise DataError(f"data.label_key: {data.name} feature {data.label_key!r} is not a class label ({type(label_feat).__name__})")
    shape = feats[data.image_key].shape
    if len(shape) != 3:
        raise DataError(f"data.image_key: {data.name} feature {data.image_key!r} has shape {shape}, expected (H, W, C)")
    native = shape[-1]
    if native != data.channels and not (native in (1, 3, 4) and data.channels in (1, 3)):
        raise DataError(f"data.channels: {data.channels} but {data.name} images have {native} channels; set data.channels: {native}")
    pools = {}
    for split, name in (("train", data.train_split), ("val", data.val_split), ("test", data.test_split)):
        if name is None:
            continue
        try:
            builder.info.splits[name]
        except Exception:  # noqa: BLE001 - tfds raises ValueError/KeyError depending on the spec
            raise DataError(
                f"data.{split}_split: {data.name} has no split {name!r}; it has {', '.join(builder.info.splits.keys())}"
            ) from None
        ids, labels = _tfds_labels(builder, name, data.label_key)
        pools[split] = Pool(ids=ids, labels=labels, tfds_split=name)
    dtype = getattr(feats[data.image_key], "dtype", None)
    return Source(
        kind="tfds",
        class_names=tuple(label_feat.names),
        pools=pools,
        description=f"tfds {data.name} {builder.info.version} in {builder.data_dir}",
        eight_bit=str(getattr(dtype, "name", dtype)) == "uint8",
        builder=builder,
        native_channels=native,
    )


# ------------------------------------------------------------------ synthetic


def synthetic_source(data) -> Source:
    """The procedural galaxy set: example i depends only on (data.synthetic.seed, i)."""
    from keras_tl.data import synthetic

    cfg = data.synthetic
    if cfg.survey not in synthetic.SURVEYS:
        raise DataError(f"data.synthetic.survey: unknown survey {cfg.survey!r}; valid: {', '.join(synthetic.SURVEYS)}")
    indices = np.arange(cfg.count, dtype=np.int64)
    labels = np.asarray([synthetic.label_of(int(i), cfg.seed) for i in indices], dtype=np.int64)
    pool = Pool(ids=[str(i) for i in indices], labels=labels, indices=indices)
    return Source(
        kind="synthetic",
        class_names=tuple(synthetic.CLASS_NAMES),
        pools={"train": pool},
        description=f"synthetic_galaxies count={cfg.count} survey={cfg.survey} seed={cfg.seed} output={cfg.output} noise_scale={cfg.noise_scale}",
        eight_bit=cfg.output == "uint8",
    )


# ----------------------------------------------------------------------- hdf5


def hdf5_source(data) -> Source:
    """One HDF5 file: ``data.hdf5.images`` (N, H, W[, C]) and ``data.hdf5.labels`` (N,); ids are row numbers."""
    from keras_tl.data import hdf5

    info = hdf5.inspect(data)
    native = info["image_shape"][2]
    eight_bit = info["dtype"] == "uint8"
    if native != data.channels and not (eight_bit and native in (1, 3, 4) and data.channels in (1, 3)):
        raise DataError(f"data.channels: {data.channels} but {data.hdf5.images!r} in {data.path} has {native} channels "
                        f"(shape {info['image_shape']}); set data.channels: {native}")
    rows = np.arange(info["n"], dtype=np.int64)
    pool = Pool(ids=[str(i) for i in rows], labels=info["labels"], indices=rows)
    h, w, c = info["image_shape"]
    return Source(
        kind="hdf5",
        class_names=info["class_names"],
        pools={"train": pool},
        description=f"hdf5 {data.path}: {data.hdf5.images} {info['n']}x{h}x{w}x{c} {info['dtype']}, labels {data.hdf5.labels}, "
                    f"{len(info['class_names'])} classes (names from {info['class_names_from']})",
        eight_bit=eight_bit,
        native_channels=native,
        hdf5=info,
    )
