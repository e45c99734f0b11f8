"""How much did fine-tuning change each stage? Linear CKA of representations, relative weight change.

Linear CKA (Kornblith et al., 2019) compares two representations of the same n examples,
X [n, p] and Y [n, q]: ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F) after centring the columns. It is 1 for
identical representations and invariant to orthogonal transforms and isotropic scaling. It is
computed here from n×n Gram matrices, so wide feature maps cost no more than narrow ones.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

BN_STATS = ("moving_mean", "moving_variance")


def _centred_gram(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    x = x - x.mean(0, keepdims=True)
    return x @ x.T


def cka_from_grams(k: np.ndarray, l: np.ndarray) -> float:
    """Linear CKA from the centred Gram matrices of two representations."""
    hsic = float(np.sum(k * l))
    norm = float(np.sqrt(np.sum(k * k) * np.sum(l * l)))
    return hsic / norm if norm > 0 else float("nan")


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between x [n, ...] and y [n, ...] (trailing axes are flattened)."""
    if len(x) != len(y):
        raise ValueError(f"linear_cka: x and y must hold the same examples, got {len(x)} and {len(y)} rows")
    return cka_from_grams(_centred_gram(x), _centred_gram(y))


def spatial_summary(fmap: np.ndarray, cells: int = 4) -> np.ndarray:
    """Average-pool a feature map [n, H, W, C] to at most cells×cells positions and flatten, so CKA
    sees where features fire without an n×(H·W·C) matrix."""
    fmap = np.asarray(fmap, np.float32)
    if fmap.ndim != 4:
        return fmap.reshape(len(fmap), -1)
    n, h, w, c = fmap.shape
    gh, gw = min(cells, h), min(cells, w)
    out = np.zeros((n, gh, gw, c), np.float32)
    for i in range(gh):
        for j in range(gw):
            block = fmap[:, i * h // gh:(i + 1) * h // gh, j * w // gw:(j + 1) * w // gw]
            out[:, i, j] = block.mean((1, 2))
    return out.reshape(n, -1)


def relative_weight_change(model0, model1, stage_of: Callable[[str], Optional[str]]) -> Dict[str, float]:
    """‖θ₁ − θ₀‖ / ‖θ₀‖ per stage over the learned parameters of the nested "backbone" (BN moving
    statistics excluded: they are not learned by the optimiser) and of the head (stage "head":
    every outer layer after the backbone). Layers are matched by name; a shape mismatch is an error.
    """
    num: Dict[str, float] = {}
    den: Dict[str, float] = {}

    def add(stage, a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        num[stage] = num.get(stage, 0.0) + float(np.sum((b - a) ** 2))
        den[stage] = den.get(stage, 0.0) + float(np.sum(a * a))

    def pairs(layer0, layer1):
        w0 = {v.path.split("/")[-1]: v for v in layer0.weights}
        for v1 in layer1.weights:
            short = v1.path.split("/")[-1]
            if short in BN_STATS or short not in w0:
                continue
            if tuple(w0[short].shape) != tuple(v1.shape):
                raise ValueError(f"relative_weight_change: {layer1.name}/{short} has shape {tuple(v1.shape)} in one model "
                                 f"and {tuple(w0[short].shape)} in the other")
            yield w0[short], v1

    bb0, bb1 = model0.get_layer("backbone"), model1.get_layer("backbone")
    for layer1 in bb1.layers:
        stage = stage_of(layer1.name)
        if stage is None or not layer1.weights:
            continue
        for a, b in pairs(bb0.get_layer(layer1.name), layer1):
            add(stage, a, b)
    names = [layer.name for layer in model1.layers]
    for layer1 in model1.layers[names.index("backbone") + 1:]:
        if layer1.weights:
            for a, b in pairs(model0.get_layer(layer1.name), layer1):
                add("head", a, b)
    return {s: (float(np.sqrt(num[s] / den[s])) if den[s] > 0 else float("inf") if num[s] > 0 else 0.0) for s in num}


def cka_per_stage(model0, model1, images: np.ndarray, stage_order: Sequence[str], batch_size: int) -> Tuple[List[str], List[float]]:
    """Linear CKA between two keras_tl models' stage outputs on the same ``images``, per stage
    both models have (in ``stage_order``): (stages, cka). Each output is summarised by
    :func:`spatial_summary` batch by batch, so memory stays at n × 16·C per stage."""
    from keras_tl import model as model_lib

    summaries: List[Dict[str, list]] = [{}, {}]
    stage_models = [model_lib.stage_model(model0), model_lib.stage_model(model1)]
    for i in range(0, len(images), batch_size):
        for sm, acc in zip(stage_models, summaries):
            for stage, fmap in sm(images[i:i + batch_size], training=False).items():
                acc.setdefault(stage, []).append(spatial_summary(np.asarray(fmap, np.float32)))
    stages = [s for s in stage_order if s in summaries[0] and s in summaries[1]]
    return stages, [linear_cka(np.concatenate(summaries[0][s]), np.concatenate(summaries[1][s])) for s in stages]
