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
    ceiling = min(last_in, last_none) >= 0.99  # both perfect: the probe cannot tell them apart
    weak_last = last_in <= last_none + PROBE_MARGIN and not ceiling
    why = (f"ImageNet's last stage {stages[-1]} probes {last_in:.3f} vs random init's {last_none:.3f} "
           + ("(both at the ceiling: no signal, reset and cut not added)" if ceiling
              else "(no better than random: reset and cut become arms)" if weak_last else "(better than random: kept whole)"))
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


# ------------------------------------------------------------------ 3. plan


def _arm(init, freeze="all", reinit=(), cut_after=None, fraction=1.0) -> dict:
    return {"init": init, "freeze": freeze, "reinit": list(reinit), "cut_after": cut_after, "data_fraction": fraction}


def candidate_levels(cand: dict, source: Optional[str], fractions: Sequence[float] = FRACTIONS) -> List[List[dict]]:
    """Arms in levels of priority, each level a superset of the one before:
    0 the main question (imagenet [and source] vs scratch, all data); 1 the same at the smaller
    data size; 2 how much to freeze; 3 reset / cut the last stage (when the probes ask for it)."""
    full, small = max(fractions), min(fractions)
    inits = ["imagenet", "none"] + ([{"label": "source", "weights": source}] if source else [])
    lv0 = [_arm(i, fraction=full) for i in inits]
    lv1 = lv0 + ([_arm(i, fraction=small) for i in inits] if small < full else [])
    lv2 = lv1 + [_arm("imagenet", "head_only", fraction=full), _arm("imagenet", f"from_{cand['freeze_from']}", fraction=full)]
    levels = [lv0, lv1, lv2]
    if cand["weak_last"]:
        levels.append(lv2 + [_arm("imagenet", reinit=[cand["last_stage"]], fraction=full),
                             _arm("imagenet", cut_after=cand["cut_after"], fraction=full)])
    return levels


def study_section(arms: List[dict], seeds: int, lr_grid: Sequence[float], n_train: int) -> dict:
    """The ``study:`` mapping (as a study recipe would hold it) for these arms."""
    out = {"arms": arms, "seeds": seeds, "baseline": {"init": "none"}, "metric": "accuracy", "train_images": n_train}
    if lr_grid:
        out["lr_grid"] = list(lr_grid)
    return out


def make_plan(base: recipe_lib.Recipe, section: dict):
    """keras_tl.study's own parse and expansion of ``section`` over ``base``."""
    from keras_tl.study import plan as plan_lib

    study = plan_lib.parse_study(json.loads(json.dumps(section)), base, "keras_tl.ask")
    return plan_lib.expand(base, study, source="keras_tl.ask")


def fit_plan(base: recipe_lib.Recipe, levels: List[List[dict]], n_train: int, seconds_per_image: float,
             budget_s: float, spi_source: str = "measured", spent_s: float = 0.0) -> dict:
    """The richest plan whose estimated cost fits ``budget_s``: levels from the richest down, two
    learning rates then one, at >= 3 seeds (as many more as fit, up to MAX_SEEDS); else the main
    question alone at 2 seeds and one rate. Raises UserError with the budget that would fit.

    Costs are :func:`keras_tl.study.plan.estimate_cost` at ``seconds_per_image``. Adaptive seeds
    replace the seed count here once ``study.seeds: {min, max}`` exists.
    """
    from keras_tl.study import plan as plan_lib

    def per_seed(arms, grid):
        p = make_plan(base, study_section(arms, 1, grid, n_train))
        return plan_lib.estimate_cost(p, seconds_per_image, spi_source).cpu_seconds

    tries = []
    for lv in range(len(levels) - 1, -1, -1):
        for grid in (LR_GRID, ()):
            tries.append((lv, grid, 3))
    tries.append((0, (), 2))
    smallest = None
    for lv, grid, min_seeds in tries:
        c1 = per_seed(levels[lv], grid)
        smallest = c1 * min_seeds
        seeds = int(budget_s // c1)
        if seeds >= min_seeds:
            seeds = min(seeds, MAX_SEEDS)
            section = study_section(levels[lv], seeds, grid, n_train)
            plan = make_plan(base, section)
            cost = plan_lib.estimate_cost(plan, seconds_per_image, spi_source)
            return {"level": lv, "levels": len(levels), "section": section, "plan": plan, "cost": cost,
                    "per_seed_s": c1, "budget_s": budget_s}
    need = spent_s + smallest
    raise UserError(f"--budget: {duration(budget_s)} left for training after {duration(spent_s)} of inspection, probes and "
                    f"cost measurement, but the smallest study (imagenet vs scratch, 2 seeds, one learning rate) needs "
                    f"~{duration(smallest)} on this machine; pass --budget {int(need // 60) + 1}m or more "
                    f"(or a smaller data.image_size with --set)")


LEVEL_TEXT = ["the main question only (ImageNet vs scratch, all data)", "ImageNet vs scratch at both data sizes",
              "+ how much to freeze", "+ reset / cut the last stage"]


def format_fit(fit: dict) -> str:
    from keras_tl.study import plan as plan_lib

    s = fit["section"]
    return (plan_lib.format_plan(fit["plan"], fit["cost"]) + "\n"
            f"ask: plan level {fit['level'] + 1} of {fit['levels']}: {LEVEL_TEXT[fit['level']]}; {s['seeds']} seeds, "
            f"{'lr_grid ' + str(s['lr_grid']) + ' picked per arm on validation' if s.get('lr_grid') else 'one learning rate'}; "
            f"estimated {duration(fit['cost'].cpu_seconds)} of the {duration(fit['budget_s'])} left in the budget")


# ------------------------------------------------------------------ 4. run


class OutOfBudget(BaseException):
    """Raised instead of starting a run that would end after the deadline (the runner releases its claim)."""


def run_study(plan, study_dir: str, *, shard: Optional[str] = None, in_process: bool = False,
              deadline: Optional[float] = None, run_seconds: float = 0.0, log=print) -> dict:
    """The study runner over ``plan`` in ``study_dir`` (always resumable), then its report; study.json's content.

    A run is not started when ``now + run_seconds`` (the plan's estimate per run, or the longest run of
    this call if longer) passes ``deadline``:
    the study then stops with seed-complete runs (the plan is seed-major) and the report says PARTIAL.
    """
    from keras_tl.errors import WeightsError
    from keras_tl.study import plan as plan_lib
    from keras_tl.study import report, runner

    problems = plan_lib.missing_weights(plan, fetch=True)
    if problems:
        raise WeightsError(problems[0])
    inner = runner.run_in_process if in_process else runner.run_in_subprocess

    longest = [run_seconds]  # the estimate, or the longest run of this call when runs take longer here

    def run_fn(recipe, run_dir):
        if deadline is not None and time.time() + longest[0] > deadline:
            raise OutOfBudget(run_dir)
        t = time.time()
        out = inner(recipe, run_dir)
        longest[0] = max(longest[0], time.time() - t)
        return out

    try:
        res = runner.run_plan(plan, study_dir, shard=runner.parse_shard(shard), resume=True, run_fn=run_fn, log=log)
        log(f"ask: ran {len(res.ran)}, already done {len(res.skipped_done)}, claimed by other workers {len(res.skipped_claimed)}")
    except OutOfBudget:
        st = runner.status(plan, study_dir)
        log(f"ask: budget spent: {st['done']} of {st['runs']} runs finished; the answer below is partial "
            "(rerun the same command to continue)")
    report.build_report(plan, study_dir)
    return json.loads(fs.read_text(os.path.join(study_dir, "study.json")))


# ------------------------------------------------------------------ 5. answer


def _is(values: dict, **want) -> bool:
    return all(json.dumps(values.get(k), sort_keys=True) == json.dumps(v, sort_keys=True) for k, v in want.items())


def _find(study: dict, **want) -> Optional[dict]:
    return next((a for a in study["arms"] if _is(a["values"], **want)), None)


def recommend(study: dict) -> Optional[dict]:
    """The best arm of a study.json (highest mean test metric; lowest for a loss) and its best seed."""
    done = [a for a in study["arms"] if a["per_seed"]]
    if not done:
        return None
    sign = 1 if study["higher_is_better"] else -1
    best = max(done, key=lambda a: sign * a["mean"])
    k = max(range(len(best["seeds"])), key=lambda i: sign * best["per_seed"][i])
    return {"arm_id": best["id"], "label": best["label"], "values": best["values"], "mean": best["mean"],
            "lo": best["lo"], "hi": best["hi"], "n": len(best["seeds"]), "lr": best["lr_picked"], "seed": best["seeds"][k]}


def extra_comparisons(study: dict) -> List[dict]:
    """Reset / cut / freeze arms against ImageNet fully fine-tuned on all data, paired by seed
    (study.json compares only against the scratch baseline); Holm across these."""
    from keras_tl.study import stats

    full = max((a["values"]["data_fraction"] for a in study["arms"]), default=1.0)
    ref = _find(study, init="imagenet", freeze="all", reinit=[], cut_after=None, data_fraction=full)
    if ref is None:
        return []
    out = []
    for a in study["arms"]:
        v = a["values"]
        if a is ref or v["init"] != "imagenet" or v["data_fraction"] != full:
            continue
        kind = "reset" if v["reinit"] else "cut" if v["cut_after"] else "freeze"
        what = (f"resetting {'+'.join(v['reinit'])}" if kind == "reset" else f"cutting after {v['cut_after']}" if kind == "cut"
                else "training the head only" if v["freeze"] == "head_only" else f"training {v['freeze'][5:]} onward")
        common = sorted(set(a["seeds"]) & set(ref["seeds"]))
        entry = {"kind": kind, "arm_id": a["id"], "reference_id": ref["id"], "a": what, "b": "fine-tuning every layer",
                 "context": "", "seeds": common}
        if common:
            pa, pr = dict(zip(a["seeds"], a["per_seed"])), dict(zip(ref["seeds"], ref["per_seed"]))
            entry.update(stats.compare([pa[k] for k in common], [pr[k] for k in common], higher_is_better=study["higher_is_better"]))
        else:
            entry.update({"n": 0, "mean": None, "ci_lo": None, "ci_hi": None, "p_t": None, "seeds_needed": None})
        out.append(entry)
    stats.finalise(out, study["higher_is_better"])
    return out


def budget_notes(study: dict, rec: Optional[dict], chance: float, per_seed_s: float, fixed_s: float, train_share: float) -> List[str]:
    """Where the budget was too small, and the budget that would do (from the study's own figures)."""
    notes = []
    if rec is None or rec["lo"] is None or rec["lo"] <= chance:
        # Training longer is the lever; 4x the training per run is a stated guess, not a measurement.
        need = fixed_s + 4 * per_seed_s * max(3, study["seeds"])
        notes.append(f"No arm left chance ({chance * 100:.1f}%) with 95% confidence at this budget: the runs were too short "
                     f"to learn this data. A study with 4x the training per run needs ~{duration(need)} (--budget "
                     f"{int(need // 60) + 1}m, with --set train.phases.1.epochs=... raised 4x).")
    main = [c for c in study["comparisons"] if c.get("n", 0) and _is(c["values"], init="imagenet")]
    full = max((c["values"]["data_fraction"] for c in main), default=None)
    top = next((c for c in main if c["values"]["data_fraction"] == full), None)
    if top is not None and top["verdict"] not in ("better", "worse"):
        n = top.get("seeds_needed")
        if top["n"] < 2:
            need = fixed_s + per_seed_s * max(3, study["seeds"])
            notes.append(f"ImageNet vs scratch on all data has {top['n']} finished seed pair; a CI needs 2+, and the planned "
                         f"{max(3, study['seeds'])} seeds need ~{duration(need)} (--budget {int(need // 60) + 1}m).")
        elif n:
            need = fixed_s + per_seed_s * n
            notes.append(f"ImageNet vs scratch on all data is unresolved at {top['n']} seeds; ~{n} seeds would resolve the "
                         f"observed difference: ~{duration(need)} for this plan (--budget {int(need // 60) + 1}m).")
        else:
            notes.append("ImageNet vs scratch on all data is unresolved, and the observed difference is too small to "
                         "resolve with a feasible number of seeds at this training length.")
    return notes


def answer_text(study: dict, extra: List[dict], rec: Optional[dict], notes: List[str], info: dict, backbone: str,
                cost_text: str, model_path: Optional[str], cand: dict) -> str:
    """The answer's first paragraph (plain words, with CIs), then the details lines."""
    from keras_tl.study import report

    partial = (f"PARTIAL ({study['runs_done']} of {study['runs_total']} runs finished; the same command again continues). "
               if study["runs_done"] < study["runs_total"] else "")
    sentences = [f"{partial}For {info['path']} ({info['images']} images, {len(info['classes'])} classes, {backbone}), on {study['split']} "
                 f"{study['metric']} with 95% CIs:"]
    main = [c for c in study["comparisons"] if _is(c["values"], init="imagenet")]
    def clause(c):
        if c.get("n", 0) == 1:  # one seed pair: a difference but no interval yet
            return (f"{c['a']} vs {c['b']}{' at ' + c['context'] if c['context'] else ''}: "
                    f"{report.fmt_diff(study, c['mean'])} {study['unit']} on the one seed pair finished, no CI yet (it needs 2+ seeds).")
        return report.comparison_clause(study, c)

    for c in sorted(main, key=lambda c: c["values"]["data_fraction"]):
        sentences.append(clause(dict(c, a="an ImageNet start", b="training from scratch",
                                     context=f"{c['values']['data_fraction'] * 100:g}% of the data")))
    for c in [c for c in study["comparisons"] if not _is(c["values"], init="imagenet")]:
        sentences.append(clause(c))
    for kind in ("reset", "cut", "freeze"):
        for c in [c for c in extra if c["kind"] == kind]:
            sentences.append(clause(c))
    if not any(c["kind"] in ("reset", "cut") for c in extra):
        sentences.append("Resetting or cutting the last stage was not run: " + (
            "the budget did not fit it." if cand["weak_last"] else f"the probes did not ask for it ({cand['why']})."))
    if not any(c["kind"] == "freeze" for c in extra):
        sentences.append("How much to freeze was not tested: the budget did not fit it (every arm fine-tuned all layers after a head warm-up).")
    if rec is not None:
        sentences.append(f"Best: {rec['label']} at {report.fmt_val(study, rec['mean'])}"
                         + (f" (95% CI {report.fmt_val(study, rec['lo'])} to {report.fmt_val(study, rec['hi'])})" if rec["lo"] is not None else "")
                         + (f", learning rate {rec['lr']:g}" if rec["lr"] else "") + "; its recipe is recommended.yaml.")
    sentences.append(cost_text)
    sentences += notes
    out = " ".join(sentences)
    if model_path:
        out += f"\n\nModel: {model_path}"
    return out


# ------------------------------------------------------------------ the command


def _options(args) -> dict:
    """What the answer depends on: the same options give the same workdir (and resume there)."""
    return {"data": os.path.abspath(args.data), "backbone": args.backbone, "budget": args.budget, "source": args.source,
            "set": list(args.overrides)}


def _load_state(workdir: str, options: dict) -> dict:
    path = os.path.join(workdir, "ask.json")
    if not fs.exists(path):
        return {"options": options}
    state = json.loads(fs.read_text(path))
    if state.get("options") != options:
        raise WorkdirError(f"{workdir}: holds an ask with other options ({json.dumps(state.get('options'))}); "
                           "rerun with the same --data/--backbone/--budget/--source/--set, or choose another --workdir")
    return state


def _plan_step(state: dict, args, base, info: dict, bad: list, cand: dict, budget_s: float, workdir: str, save, log):
    """Step 3: measure the per-image cost once, fit a study to the budget (recorded in ask.json), print it."""
    n_train = round((info["images"] - len(bad)) * (1 - base.data.val_fraction - base.data.test_fraction))
    if "plan" not in state:
        from keras_tl.study import plan as plan_lib

        t = time.time()
        spi = plan_lib.measure_seconds_per_image(base)
        state["seconds"]["measure"] = round(time.time() - t, 1)
        save()
        spent = sum(state["seconds"].values())  # inspection, probes and this measurement, in this call or an earlier one
        fit = fit_plan(base, candidate_levels(cand, args.source), n_train, spi, budget_s - spent,
                       "measured now on this machine, every layer training", spent_s=spent)
        state["plan"] = {"section": fit["section"], "level": fit["level"], "levels": fit["levels"], "seconds_per_image": spi,
                         "budget_s": budget_s, "budget_left_s": fit["budget_s"], "per_seed_s": fit["per_seed_s"],
                         "estimate_s": fit["cost"].cpu_seconds, "fingerprint": fit["plan"].fingerprint(),
                         "before_study_s": round(spent, 1)}
        save()
    p = state["plan"]
    from keras_tl.study import plan as plan_lib

    plan = make_plan(base, p["section"])
    if plan.fingerprint() != p["fingerprint"]:
        raise WorkdirError(f"{workdir}: the recorded plan no longer expands to the same study (the code changed?); choose another --workdir")
    cost = plan_lib.estimate_cost(plan, p["seconds_per_image"], "measured on this machine, every layer training")
    log(format_fit({"plan": plan, "cost": cost, "section": p["section"], "level": p["level"], "levels": p["levels"],
                    "budget_s": p["budget_left_s"]}))
    return plan, cost


def ask(args, log=print) -> dict:
    """Steps 1-5 (see the module docstring); returns ask.json's content."""
    t0 = time.time()
    budget_s = parse_budget(args.budget)
    options = _options(args)
    workdir = args.workdir or default_workdir(options)
    state = _load_state(workdir, options)
    fs.makedirs(workdir)
    save = lambda: fs.write_json(os.path.join(workdir, "ask.json"), state)  # noqa: E731
    log(f"ask: workdir {workdir}" + (" (resuming)" if "plan" in state else ""))

    # 1. data
    if "inspection" not in state:
        info = inspect_data(args.data)
        defaults = pick_defaults(info, args.backbone)
        base = base_recipe(args.data, args.backbone, defaults, args.overrides)
        bad = scan_bad_files(base)
        if bad:
            defaults["data.on_bad_file"] = "skip"
            base = base_recipe(args.data, args.backbone, defaults, args.overrides)
        state.update(inspection=info, defaults=defaults, bad_files=bad, seconds={"inspect": round(time.time() - t0, 1)})
        save()
    info, defaults, bad = state["inspection"], state["defaults"], state["bad_files"]
    base = base_recipe(args.data, args.backbone, defaults, args.overrides)
    log(format_inspection(info, defaults, bad, args.overrides))

    # 2. probes
    probe_dir = os.path.join(workdir, "probe")
    if "candidates" not in state:
        t = time.time()
        probe_out = run_probes(base, args.source, probe_dir, log=log)
        state["candidates"] = choose_candidates(probe_out)
        state["seconds"]["probe"] = round(time.time() - t, 1)
        save()
    probe_out = json.loads(fs.read_text(os.path.join(probe_dir, "probe.json")))
    cand = state["candidates"]
    log(format_probes(probe_out, cand))

    # 3. plan
    plan, cost = _plan_step(state, args, base, info, bad, cand, budget_s, workdir, save, log)
    if args.dry_run:
        log("ask: --dry_run: stopping before the study")
        return state
    study_dir = os.path.join(workdir, "study")
    if args.report_only:
        if not fs.exists(os.path.join(study_dir, "plan.json")):
            raise UserError(f"--report_only: {workdir} holds no study yet; run the same command without --report_only first")
        from keras_tl.study import report

        report.build_report(plan, study_dir)
        study = json.loads(fs.read_text(os.path.join(study_dir, "study.json")))
        state["seconds"]["study_runs_wall"] = round(sum(a["wall_time"]["total"] or 0.0 for a in study["arms"]), 1)
        return finish(state, study, plan, base, workdir, study_dir, args.backbone, log=log, t0=t0)

    # 4. run
    t = time.time()
    # Each call keeps to --budget from its own start: a rerun after an interruption gets the budget again.
    study = run_study(plan, study_dir, shard=args.shard, in_process=args.in_process, deadline=t0 + budget_s,
                      run_seconds=cost.cpu_seconds / max(1, cost.runs), log=log)
    state["seconds"]["study_this_call"] = round(time.time() - t, 1)
    state["seconds"]["study_runs_wall"] = round(sum(a["wall_time"]["total"] or 0.0 for a in study["arms"]), 1)

    # 5. answer
    return finish(state, study, plan, base, workdir, study_dir, args.backbone, log=log, t0=t0)


def finish(state: dict, study: dict, plan, base, workdir: str, study_dir: str, backbone: str, *, log=print, t0: float) -> dict:
    """Step 5: the answer from study.json, recommended.yaml and the best arm's model."""
    from keras_tl.study import runner

    rec = recommend(study)
    extra = extra_comparisons(study)
    p = state["plan"]
    model_path = None
    if rec is not None:
        arm = plan.arm(rec["arm_id"])
        over = [f"train.phases.{len(arm.recipe.train.phases) - 1}.lr={rec['lr']!r}"] if rec["lr"] else []
        recipe = recipe_lib.replace(arm.recipe, over + ["name=ask_recommended"])
        header = (f"# keras_tl.ask recommendation for {state['options']['data']}: {rec['label']}, {study['split']} "
                  f"{study['metric']} {rec['mean']:.4f} over {rec['n']} seeds (study.json: {os.path.join(study_dir, 'study.json')})\n"
                  f"#   python -m keras_tl.train --recipe {os.path.join(workdir, 'recommended.yaml')}\n")
        fs.write_text(os.path.join(workdir, "recommended.yaml"), header + recipe_lib.dump(recipe))
        lr_index = plan.study.lr_grid.index(rec["lr"]) if rec["lr"] and plan.study.lr_grid else None
        run = next(r for r in plan.runs_of(rec["arm_id"]) if r.seed == rec["seed"] and r.lr_index == lr_index)
        model_path = os.path.join(runner.run_dir(study_dir, run), "export", "model.keras")
        model_path = model_path if fs.is_remote(model_path) else os.path.abspath(model_path)
        if not fs.exists(model_path):
            model_path = None
    secs = state["seconds"]
    wall = sum(v for k, v in secs.items() if k != "study_runs_wall")
    cost_text = (f"Cost: {study['runs_done']} training runs, {duration(secs['study_runs_wall'])} of training-run wall time "
                 f"(planned ~{duration(p['estimate_s'])}); probes {duration(secs.get('probe', 0))}; this call {duration(time.time() - t0)} "
                 f"of a {duration(p['budget_s'])} budget.")
    chance = max(state["candidates"]["chance"], 1.0 / len(state["inspection"]["classes"]))
    est_run = p["estimate_s"] / max(1, study["runs_total"])
    slowdown = secs["study_runs_wall"] / (est_run * study["runs_done"]) if study["runs_done"] else 1.0
    notes = budget_notes(study, rec, chance, p["per_seed_s"] * max(1.0, slowdown), p["budget_s"] - p["budget_left_s"], 1.0)
    if slowdown > 1.2:
        notes.append(f"The runs took {slowdown:.1f}x the planned time per run on this machine (other load, or start-up "
                     "the estimate leaves out); the budgets above are scaled by that.")
    text = answer_text(study, extra, rec, notes, state["inspection"], backbone, cost_text, model_path, state["candidates"])
    state["answer"] = {"text": text, "recommended": rec, "model": model_path, "extra_comparisons": extra, "notes": notes,
                       "chance": chance, "wall_s": round(wall, 1)}
    fs.write_json(os.path.join(workdir, "ask.json"), state)
    fs.write_text(os.path.join(workdir, "answer.txt"), text + "\n")
    fs.write_text(os.path.join(workdir, "report.md"), render_report(state, study, workdir))
    log("\n" + text + "\n")
    log(f"ask: wrote {os.path.join(workdir, 'report.md')}, {os.path.join(workdir, 'recommended.yaml')}, study: {os.path.join(study_dir, 'report.md')}")
    return state


def render_report(state: dict, study: dict, workdir: str) -> str:
    """report.md: the answer first, then what ask saw and decided, then the study's own report."""
    a = state["answer"]
    info = state["inspection"]
    lines = ["# keras_tl.ask", "", a["text"], "", "## What ask saw and decided", "",
             f"- data: {info['images']} {info['file_kind']} files, classes " + ", ".join(f"{c} ({n})" for c, n in info["counts"].items())
             + f"; bad files {len(state['bad_files'])}",
             "- picked: " + ", ".join(f"`{k}={json.dumps(v)}`" for k, v in state["defaults"].items())
             + (f"; --set {' '.join(state['options']['set'])}" if state["options"]["set"] else ""),
             f"- probes: {state['candidates']['why']} (probe/probe.json, probe/probe.png)",
             f"- plan: level {state['plan']['level'] + 1} of {state['plan']['levels']} ({LEVEL_TEXT[state['plan']['level']]}), "
             f"{state['plan']['section']['seeds']} seeds, {study['runs_total']} runs, estimated {duration(state['plan']['estimate_s'])} "
             f"at {state['plan']['seconds_per_image']:.4g} s/image measured here",
             "", "## Reset, cut and freeze against ImageNet fine-tuned end to end", ""]
    from keras_tl.study import report

    for c in a["extra_comparisons"]:
        lines.append(f"- {report.comparison_clause(study, c)}")
    if not a["extra_comparisons"]:
        lines.append("- not run")
    lines += ["", "## The study", "", "The full study report (every arm, CI and plot): study/report.md, study/study.json.", "",
              "> " + study["verdict"], ""]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m keras_tl.ask", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a folder with one subfolder of images per class")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"backbone (default {DEFAULT_BACKBONE})")
    p.add_argument("--budget", default=DEFAULT_BUDGET, help=f"time for the whole ask, e.g. 20m, 3h (default {DEFAULT_BUDGET})")
    p.add_argument("--source", help="weights from your own source task (a .weights.h5/.keras file): a third init")
    p.add_argument("--workdir", help="default runs/ask/<folder>-<hash of the options>; the same command resumes there")
    p.add_argument("--shard", help="run shard i of N of the study (as keras_tl.study --shard)")
    p.add_argument("--in_process", action="store_true", help="run the training runs in this process (as keras_tl.study --in_process)")
    p.add_argument("--dry_run", action="store_true", help="inspect, probe and print the plan and its cost, then stop")
    p.add_argument("--report_only", action="store_true", help="only rebuild the answer and reports from the finished runs")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="K=V", help="recipe override, repeatable")
    return p


def _main(args) -> int:
    ask(args)
    return 0


def main(argv=None) -> int:
    cli.setup_output()
    return cli.run(_main, _parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
