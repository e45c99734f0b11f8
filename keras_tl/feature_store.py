"""A content-addressed store of frozen-backbone features, shared by the runs of a study.

A head-only phase trains the head on backbone features of the unaugmented train and val sets
(``train._cached_features``). Runs with the same frozen backbone and the same inputs compute
the same features: the seeds and lr_grid entries of one arm, the warm-up phase of every freeze
arm of one init. With ``train.feature_store: DIR`` (a study sets ``<workdir>/features``) the
first such run writes ``DIR/<key>.npz`` and the others read it.

The key is a sha256 over everything that decides the features, taken from the things
themselves rather than from the recipe keys that made them, so no recipe key can be forgotten:

- the feature extractor's architecture (every layer, recursively: its class, dtype policy, i.e.
  the precision, and config without its name: Keras numbers unnamed layers per process);
- every weight of the feature extractor, in order (init, cut_after, reinit, a weights file);
- the input tensors themselves, in order: every train (in its fixed order) and val image and
  label after decoding, splitting, subsetting, scaling and the input transform, at the
  image size the model sees;
- the TensorFlow and Keras versions.

Changing any one of them misses (tests/test_feature_store.py). Writes are atomic (temp file
+ rename): concurrent workers that miss together both compute and the last rename wins, with
identical content, and a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any, Dict, Optional, Tuple

from keras_tl import fs

VERSION = "keras_tl-features-v1"


def _strip_names(config: dict) -> dict:
    """A layer's config without its own name (only the top level: a nested ``name`` may be a dtype policy's)."""
    return {k: v for k, v in config.items() if k not in ("name", "layers", "input_layers", "output_layers")}


def model_digest(fe) -> str:
    """sha256 of the feature extractor's layers (class, config without names), dtype policy and weights."""
    import keras
    import numpy as np
    import tensorflow as tf

    h = hashlib.sha256(VERSION.encode())
    h.update(f"tf={tf.__version__} keras={keras.__version__}".encode())
    for layer in fe._flatten_layers(include_self=False, recursive=True) if hasattr(fe, "_flatten_layers") else fe.layers:
        try:
            config = layer.get_config()
        except Exception:  # noqa: BLE001 - a layer without a serialisable config: its class and weights still count
            config = {}
        policy = getattr(layer, "dtype_policy", None)
        h.update(f"{type(layer).__name__}:{getattr(policy, 'name', policy)}".encode())
        h.update(json.dumps(_strip_names(config), sort_keys=True, default=str).encode())
    for w in fe.weights:
        a = np.asarray(w.numpy() if hasattr(w, "numpy") else w)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def data_digest(*datasets) -> str:
    """sha256 of every (image, label) batch of ``datasets``, in order: dtype, shape and bytes."""
    import numpy as np

    h = hashlib.sha256()
    for i, ds in enumerate(datasets):
        h.update(f"dataset{i}".encode())
        for x, y in ds:
            for t in (x, y):
                a = np.asarray(t)
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def key(fe, train_in_order, val) -> str:
    """The store key of the features of ``train_in_order`` and ``val`` through ``fe``."""
    return hashlib.sha256(f"{model_digest(fe)}:{data_digest(train_in_order, val)}".encode()).hexdigest()[:32]


def path(store: str, k: str) -> str:
    return os.path.join(store, f"{k}.npz")


def load(store: str, k: str) -> Optional[Dict[str, Any]]:
    """The stored arrays (xtr, ytr, xva, yva) under ``k``, or None."""
    import numpy as np

    p = path(store, k)
    if not fs.exists(p):
        return None
    if fs.is_remote(p):
        with fs.gfile().GFile(p, "rb") as f:
            data = np.load(io.BytesIO(f.read()), allow_pickle=False)
    else:
        data = np.load(p, allow_pickle=False)
    return {name: data[name] for name in ("xtr", "ytr", "xva", "yva")}


def save(store: str, k: str, arrays: Dict[str, Any]) -> None:
    """Write the arrays under ``k`` atomically (a concurrent writer of the same key writes the same bytes)."""
    import numpy as np

    fs.makedirs(store)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    fs.write_bytes(path(store, k), buf.getvalue())


def features(fe, forward, train_in_order, val, store: Optional[str]) -> Tuple[Tuple[Any, ...], str]:
    """((xtr, ytr, xva, yva), status): features computed with ``forward``, read from or written to ``store``.

    status: "off" (no store), "hit" or "miss".
    """
    import numpy as np

    def extract(ds):
        xs, ys = [], []
        for x, y in ds:
            xs.append(np.asarray(forward(x), dtype=np.float32))
            ys.append(np.asarray(y))
        return np.concatenate(xs), np.concatenate(ys)

    if not store:
        return extract(train_in_order) + extract(val), "off"
    k = key(fe, train_in_order, val)
    got = load(store, k)
    if got is not None:
        return (got["xtr"], got["ytr"], got["xva"], got["yva"]), "hit"
    xtr, ytr = extract(train_in_order)
    xva, yva = extract(val)
    save(store, k, {"xtr": xtr, "ytr": ytr, "xva": xva, "yva": yva})
    return (xtr, ytr, xva, yva), "miss"
