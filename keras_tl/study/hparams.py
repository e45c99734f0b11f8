"""The study as a TensorBoard HParams experiment: ``tensorboard --logdir <workdir>``.

Layout, rewritten whole by every report::

    <workdir>/hparams/                 the experiment config (hparams and metrics, hp.hparams_config)
    <workdir>/hparams/<arm_id>/seed<k> one session per finished run: its hparams and final metrics

Hparams: every axis the study declares (arm factors), ``seed`` and ``lr`` (the study's lr_grid
entry, when it has one). Metrics: the final ``val/<name>`` and ``test/<name>`` scalars of
``metrics.json``. Each run's own training curves stay in ``runs/<...>/tensorboard``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any, Dict, List

from keras_tl import fs
from keras_tl.study.plan import Plan

DIRNAME = "hparams"


def _value(v: Any):
    """An hparam value TensorBoard accepts: bool, int, float or str."""
    if isinstance(v, (bool, int, float, str)):
        return v
    return "none" if v is None else str(v)


def final_metrics(metrics: dict) -> Dict[str, float]:
    """``{"val/accuracy": 0.9, "test/loss": 0.3, ...}`` from a run's metrics.json."""
    out = {}
    for split in ("val", "test"):
        for name, v in (metrics.get(split) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{split}/{name}"] = float(v)
    return out


def session(plan: Plan, run) -> Dict[str, Any]:
    """The hparams of one run: its arm's factors, seed and (with a grid) lr."""
    arm = next(a for a in plan.arms if a.id == run.arm_id)
    hp = {axis: _value(v) for axis, v in arm.values.items()}
    hp["seed"] = int(run.seed)
    if run.lr is not None:
        hp["lr"] = float(run.lr)
    return hp


def write_hparams(plan: Plan, workdir: str, results: Dict[str, dict]) -> str:
    """Write the HParams experiment for the finished runs (``results``: run key → metrics); returns its dir.

    Local workdirs get it atomically (written aside, then renamed into place); gs:// in place.
    """
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    runs = [r for r in plan.runs if r.key in results]
    sessions = {r.key: session(plan, r) for r in runs}
    metric_names: List[str] = sorted({k for r in runs for k in final_metrics(results[r.key])})
    domains: Dict[str, set] = {}
    for h in sessions.values():
        for k, v in h.items():
            domains.setdefault(k, set()).add(v)
    hparams = []
    for k in sorted(domains):
        values = sorted(domains[k], key=str)
        if all(isinstance(v, str) for v in values) or all(isinstance(v, bool) for v in values):
            hparams.append(hp.HParam(k, hp.Discrete(values)))
        else:
            hparams.append(hp.HParam(k))  # numbers (seed, lr, data_fraction): the dashboard shows their range
    final = os.path.join(workdir, DIRNAME)
    out = final if fs.is_remote(workdir) else os.path.join(workdir, f".{DIRNAME}.tmp-{uuid.uuid4().hex}")
    with tf.summary.create_file_writer(out).as_default():
        hp.hparams_config(hparams=hparams, metrics=[hp.Metric(m, display_name=m) for m in metric_names])
    for r in runs:
        with tf.summary.create_file_writer(os.path.join(out, *r.key.split("/"))).as_default():
            hp.hparams(sessions[r.key], trial_id=r.key)
            for name, v in final_metrics(results[r.key]).items():
                tf.summary.scalar(name, v, step=1)
    if out != final:
        aside = f"{final}.old-{uuid.uuid4().hex}"
        if os.path.exists(final):
            os.rename(final, aside)
        os.rename(out, final)
        shutil.rmtree(aside, ignore_errors=True)
    return final
