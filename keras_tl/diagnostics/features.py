"""Per-stage pooled features and BN-input statistics from one forward pass, cached on disk.

A *tap model* maps raw pixels to the global-average-pooled output of every stage of the nested
backbone and, optionally, to per-example moments of every BatchNormalization layer's input. One
pass over a split therefore yields everything the probes and the domain-gap measure need. The
result is stored as one ``.npz`` per cache key; a later call with the same key does no forward pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

from keras_tl import fs

FORMAT_VERSION = 1
# Incremented by every real forward pass over a split, so tests can prove a cache hit did none.
FORWARD_PASSES = 0


@dataclasses.dataclass(frozen=True)
class Taps:
    """Where to read a backbone: stage names in order, the backbone layer ending each stage, and
    the BatchNormalization layers with the stage each belongs to (None: outside every stage)."""

    stages: Tuple[str, ...]
    stage_layers: Tuple[str, ...]
    bn_layers: Tuple[str, ...] = ()
    bn_stages: Tuple[Optional[str], ...] = ()


@dataclasses.dataclass
class SplitFeatures:
    """One split: labels [N], pooled features per stage [N, C_s] and, when tapped, the BN-input
    mean and variance per channel over the whole split (name → (mean [C], var [C]))."""

    labels: np.ndarray
    stages: Dict[str, np.ndarray]
    bn: Optional[Dict[str, Tuple[np.ndarray, np.ndarray]]] = None

    @property
    def count(self) -> int:
        return int(len(self.labels))


def taps_for(model, entry) -> Taps:
    """The taps of a keras_tl model built from registry ``entry`` (stages present after a cut)."""
    import keras

    from keras_tl import backbones

    bb = model.get_layer("backbone")
    present = {layer.name for layer in bb.layers}
    stages, stage_layers = [], []
    for stage in entry.stages:
        name = backbones.stage_output_layer(entry, stage)
        if name in present:
            stages.append(stage)
            stage_layers.append(name)
    bns = [layer.name for layer in bb.layers if isinstance(layer, keras.layers.BatchNormalization)]
    return Taps(tuple(stages), tuple(stage_layers), tuple(bns), tuple(backbones.stage_of(entry, n) for n in bns))


def build_tap_model(model, taps: Taps, *, bn: bool = True):
    """pixels → {"stage:<s>": pooled [B, C]} (+ {"bn_mean:<i>", "bn_var:<i>": [B, C]} per BN layer).

    Shares layers (and weights) with ``model``: its "preprocess" layer and nested "backbone".
    """
    import keras
    from keras import ops

    bb = model.get_layer("backbone")
    outputs = {f"stage:{s}": bb.get_layer(n).output for s, n in zip(taps.stages, taps.stage_layers)}
    if bn:
        for i, name in enumerate(taps.bn_layers):
            outputs[f"bn:{i}"] = bb.get_layer(name).input
    inner = keras.Model(bb.input, outputs, name="backbone_taps")
    pixels = keras.Input(shape=tuple(model.input.shape[1:]), name="pixels")
    raw = inner(model.get_layer("preprocess")(pixels))
    out = {}
    for key, t in raw.items():
        t = ops.cast(t, "float32")
        axes = tuple(range(1, len(t.shape) - 1))
        if key.startswith("stage:"):
            out[key] = ops.mean(t, axis=axes) if axes else t
        else:
            # Per-example moments; the split-level variance is assembled in float64 by _BNAccumulator.
            i = key.split(":", 1)[1]
            out[f"bn_mean:{i}"] = ops.mean(t, axis=axes) if axes else t
            out[f"bn_var:{i}"] = ops.var(t, axis=axes) if axes else ops.zeros_like(t)
    return keras.Model(pixels, out, name="taps")


class _BNAccumulator:
    """Channel mean/variance over all examples and positions: the mean of the per-example
    variances plus the variance of the per-example means (exact, and free of cancellation)."""

    def __init__(self):
        self.n = 0
        self.s_mean = self.s_var = self.s_mean2 = None

    def add(self, mean: np.ndarray, var: np.ndarray) -> None:
        mean, var = mean.astype(np.float64), var.astype(np.float64)
        if self.s_mean is None:
            self.s_mean, self.s_var, self.s_mean2 = (np.zeros(mean.shape[1:]) for _ in range(3))
        self.n += len(mean)
        self.s_mean += mean.sum(0)
        self.s_var += var.sum(0)
        self.s_mean2 += (mean * mean).sum(0)

    def result(self) -> Tuple[np.ndarray, np.ndarray]:
        m = self.s_mean / self.n
        return m, np.maximum(self.s_var / self.n + self.s_mean2 / self.n - m * m, 0.0)


def make_step(tap_model):
    """The compiled inference step of ``tap_model``; pass it to every :func:`extract` call on that
    model so the graph is traced once, not once per split."""
    from keras_tl import model as model_lib

    return model_lib.inference_function(tap_model)


def extract(tap_model, dataset: Iterable, taps: Taps, *, bn: bool = True, step=None) -> SplitFeatures:
    """Run ``tap_model`` once over ``dataset`` (batches of (images, labels)) and collect the result."""
    import tensorflow as tf

    global FORWARD_PASSES
    FORWARD_PASSES += 1
    step = step or make_step(tap_model)
    feats = {s: [] for s in taps.stages}
    labels = []
    accs = [_BNAccumulator() for _ in taps.bn_layers] if bn else []
    for x, y in dataset:
        out = step(tf.convert_to_tensor(x, tf.float32))
        labels.append(np.asarray(y).reshape(-1))
        for s in taps.stages:
            feats[s].append(np.asarray(out[f"stage:{s}"]))
        for i, acc in enumerate(accs):
            acc.add(np.asarray(out[f"bn_mean:{i}"]), np.asarray(out[f"bn_var:{i}"]))
    if not labels:
        raise ValueError("extract: the dataset is empty")
    return SplitFeatures(
        labels=np.concatenate(labels).astype(np.int64),
        stages={s: np.concatenate(v).astype(np.float32) for s, v in feats.items()},
        bn={name: acc.result() for name, acc in zip(taps.bn_layers, accs)} if bn else None,
    )


# ------------------------------------------------------------------------ cache


def _plain(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def cache_key(parts: Mapping) -> str:
    """A stable hash of everything the cached features depend on."""
    text = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def default_cache_dir() -> str:
    """``$KERAS_TL_CACHE/features``, else ``~/.cache/keras_tl/features``."""
    root = os.environ.get("KERAS_TL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "keras_tl")
    return os.path.join(root, "features")


class FeatureCache:
    """Features of several splits stored as ``<dir>/<key>.npz`` plus a readable ``<key>.json``."""

    def __init__(self, directory: str):
        self.directory = directory

    def path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}.npz")

    def load(self, key: str) -> Optional[Tuple[Dict[str, SplitFeatures], dict]]:
        """(splits, extra) stored under ``key``, or None when absent or unreadable."""
        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                out = {}
                for split, info in meta["splits"].items():
                    stages = {s: z[f"{split}__stage__{i}"] for i, s in enumerate(info["stages"])}
                    bn = None
                    if info["bn_layers"] is not None:
                        bn = {n: (z[f"{split}__bnm__{i}"], z[f"{split}__bnv__{i}"]) for i, n in enumerate(info["bn_layers"])}
                    out[split] = SplitFeatures(labels=z[f"{split}__labels"], stages=stages, bn=bn)
                return out, meta.get("extra") or {}
        except (OSError, ValueError, KeyError):
            return None  # a truncated or foreign file: recompute (and overwrite) rather than fail

    def save(self, key: str, splits: Mapping[str, SplitFeatures], description: Mapping, extra: Optional[dict] = None) -> str:
        """Store ``splits`` (and a small JSON-able ``extra``) atomically under ``key``."""
        os.makedirs(self.directory, exist_ok=True)
        arrays, meta = {}, {"splits": {}, "extra": extra or {}}
        for split, f in splits.items():
            arrays[f"{split}__labels"] = f.labels
            for i, s in enumerate(f.stages):
                arrays[f"{split}__stage__{i}"] = f.stages[s]
            if f.bn is not None:
                for i, (m, v) in enumerate(f.bn.values()):
                    arrays[f"{split}__bnm__{i}"], arrays[f"{split}__bnv__{i}"] = m, v
            meta["splits"][split] = {"stages": list(f.stages), "bn_layers": list(f.bn) if f.bn is not None else None}
        arrays["__meta__"] = np.array(json.dumps(meta, default=_plain))
        path = self.path(key)
        tmp = f"{path}.tmp-{os.getpid()}.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        fs.write_text(os.path.join(self.directory, f"{key}.json"),
                      json.dumps({"format": FORMAT_VERSION, "key": key, "depends_on": description}, indent=2, default=str))
        return path


# ------------------------------------------------------------- features of a recipe


def weights_identity(info, seed: int) -> str:
    """What the features of a weights source depend on: the file's sha256, or "none" + the seed."""
    if info.source == "none":
        import keras

        return f"none:seed={seed}:keras={keras.__version__}"
    return f"{info.source}:sha256={info.sha256}"


def feature_key_parts(recipe, info, entry, data_info: dict) -> dict:
    """Everything the cached features of ``recipe`` under weights ``info`` depend on (hashed into the key)."""
    d = recipe.data
    return {
        "weights": weights_identity(info, recipe.seed),
        "backbone": entry.name,
        "preprocess": entry.preprocess,
        "conv1_adapt": recipe.model.conv1_adapt if d.channels != 3 and info.source != "none" else None,
        "image_size": list(d.image_size),
        "channels": d.channels,
        "resize": d.resize,
        "source": data_info.get("source"),
        "synthetic": dataclasses.asdict(d.synthetic) if d.source == "synthetic_galaxies" else None,
        "split_hash": {s: data_info.get("split_hash", {}).get(s) for s in ("train", "val")},
        "input_transform": data_info.get("input_transform"),  # data.nan + resolved data.scale
    }


def extract_splits(recipe, info, num_classes: int, datasets, *, log, label: str):
    """One forward pass over train (with BN statistics) and val of ``recipe``'s model under
    weights ``info``; returns ({"train", "val"}: SplitFeatures, {"bn_gap": gap or None})."""
    import time

    import keras

    from keras_tl import model as model_lib
    from keras_tl.diagnostics import bn_gap as gap_lib

    keras.utils.set_random_seed(recipe.seed)  # weights: none is "none + seed": rebuildable
    model = model_lib.build_model(recipe, num_classes, weights_info=info)
    entry = model_lib.backbone_entry(model)
    taps = taps_for(model, entry)
    pretrained = info.source != "none"
    tap_model = build_tap_model(model, taps, bn=pretrained)
    t = time.time()
    step = make_step(tap_model)
    train = extract(tap_model, datasets.train, taps, bn=pretrained, step=step)
    val = extract(tap_model, datasets.val, taps, bn=False, step=step)
    log(f"keras_tl.probe: {label}: extracted {train.count}+{val.count} examples x {len(taps.stages)} stages in {time.time() - t:.1f}s")
    extra = {"bn_gap": None}
    if pretrained:
        # Random init has no pretraining data behind its running statistics (0 and 1): no gap to measure.
        extra["bn_gap"] = gap_lib.bn_gap(model.get_layer("backbone"), train.bn, dict(zip(taps.bn_layers, taps.bn_stages)),
                                         taps.stages)
    return {"train": train, "val": val}, extra


def cached_splits(cache: FeatureCache, recipe, info, entry, datasets, *, log, label: str):
    """:func:`extract_splits` through ``cache``: (key, hit, splits, extra)."""
    parts = feature_key_parts(recipe, info, entry, datasets.info)
    key = cache_key(parts)
    cached = cache.load(key)
    if cached is None:
        splits, extra = extract_splits(recipe, info, len(datasets.class_names), datasets, log=log, label=label)
        cache.save(key, splits, parts, extra)
        return key, False, splits, extra
    log(f"keras_tl.probe: {label}: features from the cache ({cache.path(key)})")
    return key, True, cached[0], cached[1]
