"""How far apart two datasets look through a backbone: the Fréchet distance per stage.

Gaussians are fitted to the pooled stage features of each dataset and compared with FID's
formula. A distance means little alone, so each stage also gets a floor, the distance between
two random halves of the target's own features (what finite samples give for identical
distributions), and a relative distance scaled by the two feature sets' total variance.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

MEASURE = ("Fréchet distance between Gaussians fitted to the pooled stage features of the target's and "
           "the reference's training images (FID's formula); floor: the same distance between two random "
           "halves of the target's training features; relative: distance / (tr C_target + tr C_reference)")


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] (FID's formula)."""
    from scipy import linalg

    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(ca @ cb)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as the FID reference code does
        off = np.eye(len(ca)) * 1e-6
        covmean = linalg.sqrtm((ca + off) @ (cb + off))
    covmean = np.real(covmean)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(ca) + np.trace(cb) - 2.0 * np.trace(covmean))


def frechet_per_stage(target, reference, *, seed: int) -> Dict[str, list]:
    """Per stage of two :class:`~keras_tl.diagnostics.features.SplitFeatures`: the distance target
    vs reference, its split-half floor and the relative distance."""
    out = {"distance": [], "floor": [], "relative": []}
    perm = np.random.default_rng(seed).permutation(target.count)
    half_a, half_b = perm[: target.count // 2], perm[target.count // 2:]
    for stage in target.stages:
        a = np.asarray(target.stages[stage], np.float64)
        b = np.asarray(reference.stages[stage], np.float64)
        d = frechet_distance(a, b)
        scale = float(np.trace(np.atleast_2d(np.cov(a, rowvar=False))) + np.trace(np.atleast_2d(np.cov(b, rowvar=False))))
        out["distance"].append(d)
        out["floor"].append(frechet_distance(a[half_a], a[half_b]))
        out["relative"].append(d / scale if scale > 0 else None)
    return out
