"""Domain gap as seen by the BatchNormalization layers.

A pretrained BN layer stores running statistics (per-channel mean and variance of its input over
the pretraining data): what it expects. Over the target data the same input has its own
per-channel mean and variance. Treating both as per-channel Gaussians, the gap of a layer is the
**symmetric KL divergence**, ½·[KL(target‖running) + KL(running‖target)], averaged over channels
(0 when the statistics match; ≈ ½·d² for a mean shift of d running standard deviations at equal
variances). The **normalised mean shift** |μ_target − μ_running| / √(σ²_running + ε), averaged
over channels, is reported beside it because it is easier to read.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

MEASURE = ("symmetric KL divergence 0.5*(KL(target||running)+KL(running||target)) between per-channel "
           "Gaussians of the BN input (target: this data; running: the layer's moving mean/variance + epsilon), "
           "averaged over channels; mean_shift: |mean_target - moving_mean| / sqrt(moving_variance + epsilon), "
           "averaged over channels; per stage: the mean over the stage's BN layers")


def symmetric_kl(mu1, var1, mu2, var2) -> np.ndarray:
    """½·[KL(N(mu1,var1)‖N(mu2,var2)) + KL(N(mu2,var2)‖N(mu1,var1))], elementwise."""
    mu1, var1, mu2, var2 = (np.asarray(a, np.float64) for a in (mu1, var1, mu2, var2))
    d2 = (mu1 - mu2) ** 2
    return 0.25 * ((var1 + d2) / var2 + (var2 + d2) / var1 - 2.0)


def layer_gap(data_mean, data_var, moving_mean, moving_var, epsilon: float) -> Dict[str, float]:
    """{"sym_kl", "mean_shift"} of one BN layer, each averaged over channels."""
    v_run = np.asarray(moving_var, np.float64) + epsilon
    v_dat = np.asarray(data_var, np.float64) + epsilon
    kl = symmetric_kl(data_mean, v_dat, moving_mean, v_run)
    shift = np.abs(np.asarray(data_mean, np.float64) - np.asarray(moving_mean, np.float64)) / np.sqrt(v_run)
    return {"sym_kl": float(np.mean(kl)), "mean_shift": float(np.mean(shift))}


def bn_gap(backbone, moments: Mapping[str, Tuple[np.ndarray, np.ndarray]],
           layer_stages: Mapping[str, Optional[str]], stages: Sequence[str]) -> dict:
    """The gap of every BN layer of ``backbone`` named in ``moments`` (name → data mean, var),
    aggregated per stage (mean over the stage's layers; None for a stage without BN layers).

    Returns {"stages": [...], "sym_kl": [per stage], "mean_shift": [per stage],
             "layers": [{"name", "stage", "sym_kl", "mean_shift"}]}.
    """
    rows = []
    for name, (mean, var) in moments.items():
        layer = backbone.get_layer(name)
        g = layer_gap(mean, var, np.asarray(layer.moving_mean), np.asarray(layer.moving_variance), float(layer.epsilon))
        rows.append({"name": name, "stage": layer_stages.get(name), **g})
    out = {"stages": list(stages), "sym_kl": [], "mean_shift": [], "layers": rows}
    for stage in stages:
        mine = [r for r in rows if r["stage"] == stage]
        for key in ("sym_kl", "mean_shift"):
            out[key].append(float(np.mean([r[key] for r in mine])) if mine else None)
    return out

