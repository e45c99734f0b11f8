"""Ask the transfer question of a folder of images: one command from data to a verdict and a model.

    python -m keras_tl.ask --data DIR [--backbone resnet101] [--budget 3h] [--source WEIGHTS]
                           [--workdir DIR] [--shard i/N] [--in_process] [--dry_run] [--set k=v ...]

1. looks at the data (classes, counts, image sizes, channels, bad files) and picks the recipe's
   data defaults, printed and recorded in ask.json; ``--set`` overrides any recipe key;
2. probes every backbone stage under imagenet, none (and ``--source``) with :mod:`keras_tl.probe`,
   prints it at once and picks the candidate arms (reset / cut the last stage when ImageNet's last
   stage probes no better than random);
3. plans a :mod:`keras_tl.study` that fits ``--budget``, costed with the study's own per-image
   measurement on this machine; ``--dry_run`` stops after printing it;
4. runs it with the study runner, resumably: the same command again (same workdir) resumes;
5. answers in plain words from the study's study.json, writes recommended.yaml and names the best
   arm's exported model.

ask is a thin layer: every step calls the public functions of train/study/probe. Seeds are a fixed
number sized to the budget (adaptive seeds and other engines plug in at :func:`fit_plan` and
:func:`run_study`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from keras_tl import cli, fs
from keras_tl import recipe as recipe_lib
from keras_tl.errors import DataError, UserError, WorkdirError

DEFAULT_BACKBONE = "resnet101"
DEFAULT_BUDGET = "3h"
FRACTIONS = (0.25, 1.0)
LR_GRID = (1e-3, 1e-4)
MAX_SEEDS = 8  # fixed seeds for now; study.seeds {min, max} (adaptive) replaces this when it lands
SIZE_SAMPLE = 200  # files whose header is read for image sizes
# ImageNet's last stage is "no better than random" when its linear probe is within this of none's.
PROBE_MARGIN = 0.02


# ------------------------------------------------------------------ helpers


def parse_budget(text: str) -> float:
    """``3h``, ``20m``, ``90s``, ``1h30m`` or a number of seconds → seconds."""
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        secs = float(s)
    else:
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?", s)
        if not parts or not any(parts.groups()):
            raise UserError(f"--budget {text!r}: expected a duration such as 3h, 20m, 1h30m or 900 (seconds)")
        h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
        secs = h * 3600 + m * 60 + sec
    if secs <= 0:
        raise UserError(f"--budget {text!r}: must be > 0")
    return secs


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def default_workdir(options: dict) -> str:
    """runs/ask/<folder name>-<hash of the data path and every option that changes the answer>."""
    key = json.dumps(options, sort_keys=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(os.path.abspath(options["data"]))) or "data"
    return os.path.join("runs", "ask", f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}")


# ------------------------------------------------------------------ 1. data


def _image_shape(path: str, file_kind: str):
    """(height, width, channels) of one file, reading as little as its format allows."""
    if file_kind == "image":
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            bands = len(im.getbands())
        return h, w, 3 if bands == 4 else bands  # alpha is dropped by the decoder at channels 3
    if file_kind == "fits":
        from keras_tl.data import fits as fits_lib

        with open(path, "rb") as f:
            arr, _, _ = fits_lib.read_fits(f.read(), None)
    else:
        from keras_tl.data.pipeline import load_array

        arr = load_array(path, "image", keep_dtype=True)
    return int(arr.shape[0]), int(arr.shape[1]), int(arr.shape[2]) if arr.ndim == 3 else 1


def inspect_data(data_dir: str, log=print) -> dict:
    """Classes, counts, image sizes and channels of a class-folder directory (no bad-file scan)."""
    import numpy as np

    from keras_tl.data.sources import directory_source

    cfg = dataclasses.replace(recipe_lib.DataConfig(), source="directory", path=data_dir)
    src = directory_source(cfg)
    pool = src.pools["train"]
    counts = np.bincount(pool.labels, minlength=len(src.class_names)).tolist()
    step = max(1, len(pool.paths) // SIZE_SAMPLE)
    shapes, unreadable = [], 0
    for p in pool.paths[::step]:
        try:
            shapes.append(_image_shape(p, src.file_kind))
        except Exception:  # noqa: BLE001 - the bad-file scan names it with its reason
            unreadable += 1
    if not shapes:
        raise DataError(f"data.path: none of the {len(pool.paths)} files sampled in {data_dir} could be read; check the folder")
    hw = np.array([(h, w) for h, w, _ in shapes])
    chans = sorted({c for _, _, c in shapes})
    return {
        "path": data_dir, "file_kind": src.file_kind, "classes": list(src.class_names), "counts": dict(zip(src.class_names, counts)),
        "images": len(pool.paths), "ignored_files": len(src.ignored_files), "sampled": len(shapes),
        "height": {"min": int(hw[:, 0].min()), "median": float(np.median(hw[:, 0])), "max": int(hw[:, 0].max())},
        "width": {"min": int(hw[:, 1].min()), "median": float(np.median(hw[:, 1])), "max": int(hw[:, 1].max())},
        "aspect": {"min": float((hw[:, 1] / hw[:, 0]).min()), "max": float((hw[:, 1] / hw[:, 0]).max())},
        "channels": chans,
    }


def pick_defaults(info: dict, backbone: str) -> Dict[str, Any]:
    """The recipe's data keys picked from the inspection (each one can be --set)."""
    short = min(info["height"]["median"], info["width"]["median"])
    side = int(max(32, min(224, short)) // 8 * 8)
    square = info["aspect"]["min"] > 0.9 and info["aspect"]["max"] < 1.1
    n = info["images"]
    smallest = min(info["counts"].values())
    # 15% each keeps >= 3 images per class in val and test from ~20 per class; large sets need less.
    held = 0.15 if n < 5000 else 0.1
    return {
        "data.image_size": [side, side],
        "data.channels": max(info["channels"]),
        "data.resize": "resize" if square else "pad",
        "data.val_fraction": held,
        "data.test_fraction": held,
        "data.batch_size": 32 if n * (1 - 2 * held) >= 128 else 16 if smallest >= 8 else 8,
    }


def base_recipe(data_dir: str, backbone: str, defaults: Dict[str, Any], overrides: Sequence[str]) -> recipe_lib.Recipe:
    """The recipe every arm starts from: the picked data defaults, a head warm-up and a full fine-tune."""
    raw = {
        "name": "ask_" + (re.sub(r"[^A-Za-z0-9_]+", "_", os.path.basename(os.path.abspath(data_dir))) or "data"),
        "data": {"source": "directory", "path": data_dir, "augment": {"flip": True, "rot90": False}},
        "model": {"backbone": backbone, "weights": "imagenet", "bn_momentum": 0.9},
        "train": {"tensorboard": False, "phases": [
            {"name": "warmup", "trainable": "head", "epochs": 1, "optimizer": "adam", "lr": 1e-3},
            {"name": "finetune", "trainable": "all", "epochs": 4, "optimizer": "adam", "lr": 1e-4, "schedule": "cosine"},
        ]},
        "export": {"savedmodel": False, "keras": True, "backbone_weights": False, "verify": False},
    }
    sets = [f"{k}={json.dumps(v)}" for k, v in defaults.items()] + list(overrides)
    raw = recipe_lib.apply_overrides(raw, sets, where="keras_tl.ask")
    return recipe_lib.from_dict(raw, "keras_tl.ask")


def scan_bad_files(recipe: recipe_lib.Recipe) -> List[dict]:
    """Every file the training pipeline could not read, with its reason (train's own scan)."""
    from keras_tl.data import pipeline

    skip = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, on_bad_file="skip"))
    return pipeline.scan(skip)["bad"]


def format_inspection(info: dict, defaults: Dict[str, Any], bad: List[dict], overrides: Sequence[str]) -> str:
    lines = [f"ask: data {info['path']}: {info['images']} {info['file_kind']} files, {len(info['classes'])} classes",
             "  counts: " + ", ".join(f"{c} {n}" for c, n in info["counts"].items()),
             f"  sizes (of {info['sampled']} sampled): height {info['height']['min']}-{info['height']['max']} "
             f"(median {info['height']['median']:g}), width {info['width']['min']}-{info['width']['max']} "
             f"(median {info['width']['median']:g}); channels {info['channels']}",
             f"  bad files: {len(bad)}" + (f" (e.g. {bad[0]['path']}: {bad[0]['reason']}; skipped, listed in ask.json)" if bad else ""),
             "  picked: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in defaults.items())]
    if overrides:
        lines.append("  --set: " + " ".join(overrides))
    return "\n".join(lines)


# ------------------------------------------------------------------ 2. probes


def probe_weights(source: Optional[str]) -> List[str]:
    return ["imagenet", "none"] + ([source] if source else [])


def run_probes(recipe: recipe_lib.Recipe, source: Optional[str], workdir: str, log=print) -> dict:
    """keras_tl.probe over imagenet, none (and the source weights); probe.json in ``workdir``."""
    from keras_tl import probe

    return probe.run_probe(recipe, probe_weights(source), workdir, log=log)


def choose_candidates(probe_out: dict) -> dict:
    """Which arms the probes make worth running: reset/cut the last stage when ImageNet's last stage
    probes no better than random init (within PROBE_MARGIN), and the freeze point."""
    stages = list(probe_out["stages"])
    res = probe_out["results"]
    last_in, last_none = res["imagenet"]["linear"][-1], res["none"]["linear"][-1]
    best_in = max(range(len(stages)), key=lambda i: res["imagenet"]["linear"][i])
    weak_last = last_in <= last_none + PROBE_MARGIN
    why = (f"ImageNet's last stage {stages[-1]} probes {last_in:.3f} vs random init's {last_none:.3f} "
           + ("(no better than random: reset and cut become arms)" if weak_last else "(better than random: kept whole)"))
    return {
        "last_stage": stages[-1], "cut_after": stages[-2], "weak_last": weak_last, "why": why,
        "best_imagenet_stage": stages[best_in], "freeze_from": stages[-2],
        "chance": probe_out["chance"],
    }


def format_probes(probe_out: dict, cand: dict) -> str:
    stages = probe_out["stages"]
    width = max(len(w) for w in probe_out["results"]) + 2
    lines = [f"ask: probes (linear accuracy on val per stage; chance {probe_out['chance']:.3f}):",
             "  " + " " * width + " ".join(f"{s[:7]:>7}" for s in stages)]
    for w, r in probe_out["results"].items():
        lines.append(f"  {w:<{width}}" + " ".join(f"{v:7.3f}" for v in r["linear"]))
    gap = probe_out.get("bn_gap", {}).get("results", {}).get("imagenet")
    if gap and gap.get("sym_kl"):
        lines.append("  BN gap, imagenet (symmetric KL of this data vs the BN running statistics): "
                     + " ".join(f"{s} {v:.2f}" for s, v in zip(gap["stages"], gap["sym_kl"]) if v is not None))
    lines.append(f"  {cand['why']}")
    return "\n".join(lines)
