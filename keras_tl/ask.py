"""Ask the transfer question of a folder of images: one command from data to a verdict and a model.

    python -m keras_tl.ask --data DIR [--backbone resnet101] [--budget 3h] [--source WEIGHTS]
                           [--workdir DIR] [--shard i/N] [--in_process] [--engine local|ray]
                           [--ray_address ADDR] [--runs_per_worker K] [--dry_run] [--set k=v ...]

1. looks at the data (classes, counts, image sizes, channels, bad files) and picks the recipe's
   data defaults, printed and recorded in ask.json; ``--set`` overrides any recipe key;
2. probes every backbone stage under imagenet, none (and ``--source``) with :mod:`keras_tl.probe`,
   prints it at once and picks the candidate arms (reset / cut the last stage when ImageNet's last
   stage probes no better than random);
3. measures this machine's cost (seconds per training image, and what each run pays besides
   training: start-up, model build, tracing of the train and eval functions, evaluation, export)
   and plans a :mod:`keras_tl.study` with adaptive seeds (at least 3 per comparison, at most what
   ``--budget`` allows) whose most expensive outcome fits the budget (when 3 do not fit: the main
   question at 2 fixed seeds); writes it as study.yaml, a recipe keras_tl.study runs as it is;
   ``--dry_run`` stops after printing it;
4. runs it with the study's own runner, resumably (the same command again resumes): the stopping
   rule adds seeds only to comparisons still unresolved and stops when they are settled;
   ``--engine``, ``--ray_address`` and ``--runs_per_worker`` go to the study as keras_tl.study
   takes them, and combinations the study refuses are refused before anything runs;
5. answers in plain words from the study's study.json, writes recommended.yaml and names the best
   arm's exported model. The answer says PARTIAL only when the budget ran out before the stopping
   rule settled the comparisons or reached their maximum.

ask is a thin layer: every step calls the public functions of train/study/probe.
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
MIN_SEEDS = 3  # adaptive seeds' first look (the study's sequential test needs >= 3)
MAX_SEEDS = 12  # the most seeds ask plans per comparison, budget permitting
FALLBACK_SEEDS = 2  # fixed seeds of the main question when the budget does not fit MIN_SEEDS
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


# Scratch trains every layer from the first phase: a head-only warm-up on a random, frozen backbone
# can leave the whole model at chance (recipe.head_first_on_random_backbone; README Evidence). The
# study's init carries that key, as the README's study recipes do.
SCRATCH = {"label": "scratch", "weights": "none", "set": {"train.phases.0.trainable": "all"}}


def is_scratch(init) -> bool:
    return isinstance(init, dict) and init.get("label") == "scratch"


def _arm(init, freeze="all", reinit=(), cut_after=None, fraction=1.0) -> dict:
    return {"init": SCRATCH if init == "none" else init, "freeze": freeze, "reinit": list(reinit), "cut_after": cut_after,
            "data_fraction": fraction}


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


def study_section(arms: List[dict], seeds, lr_grid: Sequence[float], n_train: int) -> dict:
    """The ``study:`` mapping (as a study recipe would hold it) for these arms; ``seeds`` is a
    number or adaptive ``{"min": m, "max": M}``."""
    out = {"arms": arms, "seeds": seeds, "baseline": {"init": "scratch"}, "metric": "accuracy",
           "train_images": n_train}
    if lr_grid:
        out["lr_grid"] = list(lr_grid)
    return out


def seeds_text(seeds) -> str:
    return f"adaptive seeds {seeds['min']}-{seeds['max']}" if isinstance(seeds, dict) else f"{seeds} seeds (fixed)"


def make_plan(base: recipe_lib.Recipe, section: dict):
    """keras_tl.study's own parse and expansion of ``section`` over ``base``."""
    from keras_tl.study import plan as plan_lib

    study = plan_lib.parse_study(json.loads(json.dumps(section)), base, "keras_tl.ask")
    return plan_lib.expand(base, study, source="keras_tl.ask")


def measure_startup() -> Optional[float]:
    """Seconds this process takes to import TensorFlow, Keras and keras_tl.train, what each run's fresh
    process pays; None when they are imported already (then :func:`measure_costs` starts a process)."""
    if "tensorflow" in sys.modules:
        return None
    t = time.perf_counter()
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    import keras_tl.train  # noqa: F401
    return round(time.perf_counter() - t, 3)


def measure_costs(recipe: recipe_lib.Recipe, n_classes: int, *, fresh_process: bool = True,
                  startup: Optional[float] = None) -> dict:
    """This machine's training cost for ``recipe``, measured now (seconds).

    ``seconds_per_image``: a training step of every layer, per image (the measurement of
    :func:`keras_tl.study.plan.measure_seconds_per_image`, made here on the same model so it is built
    once); ``eval_seconds_per_image``: a forward pass per image; and what every run pays once per
    process or phase whatever its data size: ``startup`` (a fresh python importing TensorFlow and keras_tl.train,
    which each run pays when runs are subprocesses; ``startup`` when given, as :func:`measure_startup`
    measured it), ``build`` (the model), ``trace_train``, ``trace_head`` (only the head
    training) and ``trace_eval`` (the first step minus a steady one: graph tracing, once per phase), ``export``
    (saving the .keras model).
    """
    import subprocess
    import tempfile

    import numpy as np

    from keras_tl import distribute
    from keras_tl import model as model_lib

    out = {"startup": 0.0}
    if fresh_process and startup is not None:
        out["startup"] = startup
    elif fresh_process:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import tensorflow, keras, keras_tl.train"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        out["startup"] = time.perf_counter() - t
    # Timing does not depend on the weights' values; "none" keeps this offline.
    timed = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, weights="none", reinit=()))
    t = time.perf_counter()
    m = model_lib.build_model(timed, n_classes)
    out["build"] = time.perf_counter() - t
    m.trainable = True
    jit = distribute.jit_for(recipe)  # as the runs resolve it here (Keras' own "auto" would use XLA on CPU)
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=jit)
    h, w = recipe.data.image_size
    bs = recipe.data.batch_size
    x = np.random.default_rng(0).uniform(0, 255, (bs, h, w, recipe.data.channels)).astype("float32")
    y = np.zeros((bs,), "int32")

    def timed_calls(fn, n):
        t = time.perf_counter()
        fn(x, y)
        first = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(n):
            fn(x, y)
        return first, (time.perf_counter() - t) / n

    first, step = timed_calls(m.train_on_batch, 3)
    out["seconds_per_image"], out["trace_train"] = step / bs, max(0.0, first - step)
    first, step = timed_calls(m.test_on_batch, 3)
    out["eval_seconds_per_image"], out["trace_eval"] = step / bs, max(0.0, first - step)
    # A head-only phase traces its own, smaller train function (measured 14 s vs 43 s for every layer).
    m.get_layer("backbone").trainable = False
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=jit)
    first, step = timed_calls(m.train_on_batch, 1)
    out["trace_head"] = max(0.0, first - step)
    with tempfile.TemporaryDirectory(prefix="keras_tl_ask_") as tmp:
        t = time.perf_counter()
        m.save(os.path.join(tmp, "model.keras"))
        out["export"] = time.perf_counter() - t
    return {k: round(v, 6) for k, v in out.items()}


def run_fixed_seconds(costs: dict, recipe: recipe_lib.Recipe, n_eval: int) -> float:
    """Seconds one run of ``recipe`` pays besides its training steps: start-up, build, tracing of the
    train and eval functions in every phase, evaluating ``n_eval`` images (val and test: charged after
    every epoch and once more at the end, an upper bound, since only val is evaluated each epoch), and
    export."""
    phases = recipe.train.phases
    epochs = sum(ph.epochs for ph in phases)
    traces = sum(costs["trace_head"] if ph.trainable == "head" else costs["trace_train"] for ph in phases)
    return (costs["startup"] + costs["build"] + traces + (len(phases) + 1) * costs["trace_eval"] + costs["export"]
            + n_eval * (epochs + 1) * costs["eval_seconds_per_image"])


def eval_images(base: recipe_lib.Recipe, n_images: int) -> int:
    """Validation + test images (what each evaluation pass reads)."""
    return round(n_images * (base.data.val_fraction + base.data.test_fraction))


def estimate(plan, costs: dict, n_eval: int, source: str = "measured on this machine"):
    """The study's cost estimate (:func:`keras_tl.study.plan.estimate_cost`) with ask's measured
    per-run fixed cost instead of the study's fixed guess; for adaptive seeds, the most the study
    can run (every compared arm at the maximum seeds, the others at the first look's)."""
    from keras_tl.study import adaptive
    from keras_tl.study import plan as plan_lib

    runs = plan.runs
    if plan.study.adaptive:
        compared = {x for p in adaptive.pairs_of(plan) for x in (p.arm, p.ref)}
        first = plan.study.design().looks[0]
        runs = tuple(r for r in plan.runs if r.arm_id in compared or r.seed < first)
    images = sum(plan_lib.images_per_run(r.recipe, plan.study) for r in runs)
    fixed = sum(run_fixed_seconds(costs, r.recipe, n_eval) for r in runs)
    cost = plan_lib.estimate_cost(plan, costs["seconds_per_image"], source)
    epochs = sum(ph.epochs for r in runs for ph in r.recipe.train.phases)
    return dataclasses.replace(cost, runs=len(runs), epochs=epochs, images=images,
                               overhead_per_run=round(fixed / max(1, len(runs)), 1),
                               cpu_seconds=images * costs["seconds_per_image"] + fixed)


def fit_plan(base: recipe_lib.Recipe, levels: List[List[dict]], n_train: int, costs: dict, n_eval: int,
             budget_s: float, spent_s: float = 0.0) -> dict:
    """The richest plan whose most expensive outcome fits ``budget_s``, with adaptive seeds.

    Levels are tried from the richest down, first with room for the stopping rule to add seeds
    (max >= MIN_SEEDS + 3), then with max >= MIN_SEEDS; max is as many seeds as the budget allows, up to
    MAX_SEEDS. When not even the main question fits at MIN_SEEDS, the main question with FALLBACK_SEEDS
    fixed seeds. Raises UserError with the budget that would fit. No lr_grid: the study refuses it with
    adaptive seeds (a rate picked on the mean over seeds could change as seeds are added).
    """
    per_seed = {}

    def fitted(lv, seeds):
        section = study_section(levels[lv], seeds, (), n_train)
        plan = make_plan(base, section)
        return {"level": lv, "levels": len(levels), "section": section, "plan": plan,
                "cost": estimate(plan, costs, n_eval), "per_seed_s": per_seed[lv], "budget_s": budget_s}

    for lv in range(len(levels)):
        per_seed[lv] = estimate(make_plan(base, study_section(levels[lv], 1, (), n_train)), costs, n_eval).cpu_seconds
    for floor in (MIN_SEEDS + 3, MIN_SEEDS):
        for lv in range(len(levels) - 1, -1, -1):
            # Every arm at ``top`` seeds fits; arms outside the comparisons stop at the first look, so the
            # most the adaptive study can cost allows a few more.
            top = max(MIN_SEEDS - 1, min(MAX_SEEDS, int(budget_s // per_seed[lv])))
            while top < MAX_SEEDS and fitted(lv, {"min": MIN_SEEDS, "max": top + 1})["cost"].cpu_seconds <= budget_s:
                top += 1
            if top >= floor:
                return fitted(lv, {"min": MIN_SEEDS, "max": top})
    smallest = per_seed[0] * FALLBACK_SEEDS
    if smallest <= budget_s:
        return fitted(0, FALLBACK_SEEDS)
    need = spent_s + smallest
    raise UserError(f"--budget: {duration(budget_s)} left for training after {duration(spent_s)} of inspection, probes and "
                    f"cost measurement, but the smallest study (imagenet vs scratch, {FALLBACK_SEEDS} seeds) needs "
                    f"~{duration(smallest)} on this machine; pass --budget {int(need // 60) + 1}m or more "
                    f"(or a smaller data.image_size with --set)")


LEVEL_TEXT = ["the main question only (ImageNet vs scratch, all data)", "ImageNet vs scratch at both data sizes",
              "+ how much to freeze", "+ reset / cut the last stage"]


def format_costs(costs: dict, fixed_s: float) -> str:
    return (f"ask: cost measured here: {costs['seconds_per_image']:.4g} s per training image, {costs['eval_seconds_per_image']:.4g} "
            f"s per evaluated image; per run ~{fixed_s:.0f} s besides training: start-up {costs['startup']:.1f} s, build "
            f"{costs['build']:.1f} s, tracing per phase {costs['trace_train']:.1f} s (train every layer) or {costs['trace_head']:.1f} s "
            f"(head only) + {costs['trace_eval']:.1f} s (eval), "
            f"export {costs['export']:.1f} s, evaluation")


def format_fit(fit: dict) -> str:
    from keras_tl.study import adaptive
    from keras_tl.study import plan as plan_lib

    s = fit["section"]
    return (plan_lib.format_plan(fit["plan"], fit["cost"], adaptive.plan_lines(fit["plan"])) + "\n"
            f"ask: plan level {fit['level'] + 1} of {fit['levels']}: {LEVEL_TEXT[fit['level']]}; {seeds_text(s['seeds'])}, "
            f"one learning rate; estimated {duration(fit['cost'].cpu_seconds)} at most, of the {duration(fit['budget_s'])} "
            "left in the budget")


def study_recipe_text(base: recipe_lib.Recipe, section: dict, study_dir: str) -> str:
    """The study recipe ask runs, as a file keras_tl.study reads (headed by its command)."""
    import yaml

    body = recipe_lib.dump(base).rstrip("\n") + "\n" + yaml.safe_dump({"study": json.loads(json.dumps(section))}, sort_keys=False)
    return (f"# The study keras_tl.ask planned (and runs in {study_dir}); the same study without ask:\n"
            f"#   python -m keras_tl.study --recipe {os.path.join(os.path.dirname(study_dir), 'study.yaml')} "
            f"--workdir {study_dir} --resume\n" + body)


# ------------------------------------------------------------------ 4. run


class OutOfBudget(Exception):
    """Raised instead of starting a run that would end after the deadline (the runner releases its claim).
    An Exception, so every engine hands it back as the run's error (Ray wraps it in a RayTaskError that
    keeps it as ``cause``: :func:`_out_of_budget`) rather than as an interrupt."""


class DeadlineRun:
    """A study's ``run_fn`` that refuses to start a run when ``now + run_seconds`` (the plan's estimate per
    run, or the longest run seen by this instance if longer) passes ``deadline``. A plain class so
    that it pickles to engine workers; there each worker holds its own copy, so "the longest run seen"
    covers only the runs of that worker (with one run per worker, the plan's estimate alone)."""

    def __init__(self, inner, deadline: Optional[float], run_seconds: float):
        self.inner, self.deadline, self.longest = inner, deadline, run_seconds

    def __call__(self, recipe, run_dir):
        if self.deadline is not None and time.time() + self.longest > self.deadline:
            raise OutOfBudget(run_dir)
        t = time.time()
        out = self.inner(recipe, run_dir)
        self.longest = max(self.longest, time.time() - t)
        return out


def _out_of_budget(e: BaseException) -> bool:
    """OutOfBudget, also when an engine wrapped it (a Ray task error keeps it as ``cause``)."""
    return isinstance(e, OutOfBudget) or isinstance(getattr(e, "cause", None), OutOfBudget)


def run_study(plan, study_dir: str, *, shard: Optional[str] = None, in_process: bool = False, engine: str = "local",
              ray_address: Optional[str] = None, runs_per_worker: int = 1, deadline: Optional[float] = None,
              run_seconds: float = 0.0, inner=None, log=print) -> dict:
    """The study runner over ``plan`` in ``study_dir`` (always resumable), then its report; study.json's content.

    Adaptive seeds: :func:`keras_tl.study.adaptive.run_adaptive` adds rounds of seeds while comparisons are
    open; fixed seeds: :func:`keras_tl.study.runner.run_plan` on ``engine``. Engine options are checked by
    the study's own :func:`keras_tl.study.engines.check_options`. A run is not started when it would end
    after ``deadline`` (:class:`DeadlineRun`): the study then stops and its report says PARTIAL.
    ``inner`` replaces the training run (tests).
    """
    from keras_tl.errors import WeightsError
    from keras_tl.study import adaptive, engines, report, runner
    from keras_tl.study import plan as plan_lib

    engines.check_options(engine=engine, runs_per_worker=runs_per_worker, in_process=in_process)
    problems = plan_lib.missing_weights(plan, fetch=True)
    if problems:
        raise WeightsError(problems[0])
    eng = engines.make_engine(engine, resources=plan.study.resources, address=ray_address, runs_per_worker=runs_per_worker)
    if inner is None:
        inner = runner.run_in_process if (in_process or eng.in_worker) else runner.run_in_subprocess
    run_fn = DeadlineRun(inner, deadline, run_seconds)
    shard_t = runner.resolve_shard(shard)
    try:
        if plan.study.adaptive:
            res = adaptive.run_adaptive(plan, study_dir, design=plan.study.design(), margin=adaptive.margin(plan),
                                        shard=shard_t, resume=True, run_fn=run_fn, engine=eng, log=log)
        else:
            res = runner.run_plan(plan, study_dir, shard=shard_t, resume=True, run_fn=run_fn, engine=eng, log=log)
        log(f"ask: ran {len(res.ran)}, already done {len(res.skipped_done)}, claimed by other workers {len(res.skipped_claimed)}")
    except BaseException as e:  # noqa: BLE001 - only the deadline is handled here
        if not _out_of_budget(e):
            raise
        st = runner.status(plan, study_dir)
        log(f"ask: budget spent: {st['done']} runs finished; the answer below is partial (rerun the same command to continue)")
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
    from keras_tl.study import report, stats

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
        out.append({"kind": kind, "arm_id": a["id"], "reference_id": ref["id"], "a": what, "b": "fine-tuning every layer",
                    "context": "", **report.compare_arm_summaries(a, ref, study["higher_is_better"])})
    stats.finalise(out, study["higher_is_better"])
    return out


def budget_notes(study: dict, rec: Optional[dict], chance: float, per_seed_s: float, fixed_s: float) -> List[str]:
    """Where the budget was too small, and the budget that would do (from the study's own figures):
    ``per_seed_s`` is the plan's cost per seed of every arm, ``fixed_s`` what ask spent before the study."""
    from keras_tl.study import sequential, stats

    def budget(need):
        return f"~{duration(need)} (--budget {int(need // 60) + 1}m)"

    notes = []
    most = max(MIN_SEEDS, study["seeds"])
    if rec is None or rec["lo"] is None or rec["lo"] <= chance:
        # Training longer is the lever; 4x the training per run is a stated guess, not a measurement.
        notes.append(f"No arm left chance ({chance * 100:.1f}%) with 95% confidence at this budget: the runs were too short "
                     f"to learn this data. A study with 4x the training per run needs {budget(fixed_s + 4 * per_seed_s * most)}, "
                     "with --set train.phases.1.epochs=... raised 4x.")
    main = [c for c in study["comparisons"] if c.get("n", 0) and _is(c["values"], init="imagenet")]
    full = max((c["values"]["data_fraction"] for c in main), default=None)
    top = next((c for c in main if c["values"]["data_fraction"] == full), None)
    if top is None or top["verdict"] in (stats.BETTER, stats.WORSE, stats.BOTH_AT_CHANCE, sequential.EQUIVALENT):
        return notes  # settled, or both at chance: more seeds would not help (the note above says what would)
    n = top["n"]
    if study.get("adaptive"):
        if top["verdict"] == sequential.OUT_OF_SEEDS:
            notes.append(f"ImageNet vs scratch on all data is unresolved at the maximum of {n} seeds: the difference is small "
                         f"next to the seed-to-seed spread; twice the seeds need {budget(fixed_s + 2 * per_seed_s * n)}.")
        else:
            notes.append(f"ImageNet vs scratch on all data is unresolved at {n} seeds because the budget ran out before the "
                         f"stopping rule settled it; its maximum of {study['seeds']} seeds needs {budget(fixed_s + per_seed_s * study['seeds'])}.")
        return notes
    need = top.get("seeds_needed")
    if n < 2:
        notes.append(f"ImageNet vs scratch on all data has {n} finished seed pair; a CI needs 2+, and {most} seeds need "
                     f"{budget(fixed_s + per_seed_s * most)}.")
    elif need:
        notes.append(f"ImageNet vs scratch on all data is unresolved at {n} seeds; ~{need} seeds would resolve the "
                     f"observed difference: {budget(fixed_s + per_seed_s * need)} for this plan.")
    else:
        notes.append("ImageNet vs scratch on all data is unresolved, and the observed difference is too small to "
                     "resolve with a feasible number of seeds at this training length.")
    return notes


def is_partial(study: dict) -> bool:
    """Did the budget stop the study before it was complete? Fixed seeds: runs are missing. Adaptive
    seeds: fewer runs than the maximum is the rule working; partial is a round left unfinished or a
    comparison the budget stopped before the rule settled it or reached its maximum."""
    from keras_tl.study import sequential

    a = study.get("adaptive")
    if not a:
        return study["runs_done"] < study["runs_total"]
    return not a["done"] or any(c["verdict"] == sequential.OUT_OF_BUDGET for c in study["comparisons"])


def partial_text(study: dict) -> str:
    if not is_partial(study):
        return ""
    if study.get("adaptive"):
        return (f"PARTIAL (the budget ran out before the stopping rule settled every comparison: {study['runs_done']} runs "
                f"finished, {study['adaptive']['runs_missing']} more needed for the next look; the same command again continues). ")
    return f"PARTIAL ({study['runs_done']} of {study['runs_total']} runs finished; the same command again continues). "


def calibration(plan, study_dir: str, costs: dict, n_eval: int) -> Optional[dict]:
    """The finished runs' own wall time (run.json; plus the measured start-up) against the estimate for
    the same runs: the calibration of the cost model by this study's runs."""
    from keras_tl.study import plan as plan_lib
    from keras_tl.study import runner

    seen, est = [], 0.0
    for r in plan.runs:
        path = os.path.join(runner.run_dir(study_dir, r), "run.json")
        if not runner.is_done(study_dir, r) or not fs.exists(path):
            continue
        w = json.loads(fs.read_text(path)).get("wall_time_s", {})
        if w.get("this_process") is None:
            continue
        seen.append(w["this_process"] + costs["startup"])
        est += plan_lib.images_per_run(r.recipe, plan.study) * costs["seconds_per_image"] + run_fixed_seconds(costs, r.recipe, n_eval)
    if not seen:
        return None
    return {"runs": len(seen), "observed_s": round(sum(seen), 1), "estimated_s": round(est, 1),
            "ratio": round(sum(seen) / est, 3) if est else None}


def answer_text(study: dict, extra: List[dict], rec: Optional[dict], notes: List[str], info: dict, backbone: str,
                cost_text: str, model_path: Optional[str], cand: dict) -> str:
    """The answer's first paragraph (plain words, with CIs), then the details lines."""
    from keras_tl.study import report

    partial = partial_text(study)
    sentences = [f"{partial}For {info['path']} ({info['images']} images, {len(info['classes'])} classes, {backbone}), on {study['split']} "
                 f"{study['metric']} with 95% CIs:"]
    main = [c for c in study["comparisons"] if _is(c["values"], init="imagenet")]
    def clause(c, study=study):
        if c.get("n", 0) == 1:  # one seed pair: a difference but no interval yet
            return (f"{c['a']} vs {c['b']}{' at ' + c['context'] if c['context'] else ''}: "
                    f"{report.fmt_diff(study, c['mean'])} {study['unit']} on the one seed pair finished, no CI yet (it needs 2+ seeds).")
        return report.comparison_clause(study, c)

    for c in sorted(main, key=lambda c: c["values"]["data_fraction"]):
        sentences.append(clause(dict(c, a="an ImageNet start", b="training from scratch",
                                     context=f"{c['values']['data_fraction'] * 100:g}% of the data")))
    for c in [c for c in study["comparisons"] if not _is(c["values"], init="imagenet")]:
        sentences.append(clause(c))
    fixed = dict(study, adaptive=None)  # ask's own comparisons are fixed-sample (stats.compare), not sequential
    for kind in ("reset", "cut", "freeze"):
        for c in [c for c in extra if c["kind"] == kind]:
            sentences.append(clause(c, fixed))
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
    """Step 3: measure this machine's costs once, fit a study to the budget (recorded in ask.json and as
    study.yaml), print it."""
    usable = info["images"] - len(bad)
    n_train = round(usable * (1 - base.data.val_fraction - base.data.test_fraction))
    n_eval = eval_images(base, usable)
    if "plan" not in state:
        t = time.time()
        # Every run pays an interpreter start-up, except in this process; a warm worker (Ray's max_calls,
        # the local pool) pays it once per --runs_per_worker runs.
        costs = measure_costs(base, len(info["classes"]), startup=state.get("startup_s"), fresh_process=not args.in_process)
        costs["startup"] = costs["startup"] / max(1, args.runs_per_worker)
        state["seconds"]["measure"] = round(time.time() - t, 1)
        save()
        spent = sum(state["seconds"].values())  # inspection, probes and this measurement, in this call or an earlier one
        fit = fit_plan(base, candidate_levels(cand, args.source), n_train, costs, n_eval, budget_s - spent, spent_s=spent)
        state["plan"] = {"section": fit["section"], "level": fit["level"], "levels": fit["levels"], "costs": costs,
                         "seconds_per_image": costs["seconds_per_image"], "n_eval": n_eval,
                         "run_fixed_s": round(run_fixed_seconds(costs, base, n_eval), 1),
                         "budget_s": budget_s, "budget_left_s": fit["budget_s"], "per_seed_s": fit["per_seed_s"],
                         "estimate_s": fit["cost"].cpu_seconds, "estimate_runs": fit["cost"].runs,
                         "fingerprint": fit["plan"].fingerprint(), "before_study_s": round(spent, 1)}
        save()
    p = state["plan"]
    if "costs" not in p:
        raise WorkdirError(f"{workdir}: its plan was recorded by an older keras_tl.ask (no measured per-run cost); "
                           "choose another --workdir")
    plan = make_plan(base, p["section"])
    if plan.fingerprint() != p["fingerprint"]:
        raise WorkdirError(f"{workdir}: the recorded plan no longer expands to the same study (the code changed?); choose another --workdir")
    study_dir = os.path.join(workdir, "study")
    fs.write_text(os.path.join(workdir, "study.yaml"), study_recipe_text(base, p["section"], study_dir))
    cost = estimate(plan, p["costs"], p["n_eval"])
    log(format_costs(p["costs"], p["run_fixed_s"]))
    log(format_fit({"plan": plan, "cost": cost, "section": p["section"], "level": p["level"], "levels": p["levels"],
                    "budget_s": p["budget_left_s"]}))
    return plan, cost


def ask(args, log=print) -> dict:
    """Steps 1-5 (see the module docstring); returns ask.json's content."""
    from keras_tl.study import engines

    t0 = time.time()
    budget_s = parse_budget(args.budget)
    # The engine options are checked now, with the study's own rule, before minutes of inspection and probes.
    engines.check_options(engine=args.engine, runs_per_worker=args.runs_per_worker, in_process=args.in_process)
    engines.make_engine(args.engine, address=args.ray_address, runs_per_worker=args.runs_per_worker)  # checks only
    options = _options(args)
    workdir = args.workdir or default_workdir(options)
    state = _load_state(workdir, options)
    fs.makedirs(workdir)
    save = lambda: fs.write_json(os.path.join(workdir, "ask.json"), state)  # noqa: E731
    log(f"ask: workdir {workdir}" + (" (resuming)" if "plan" in state else ""))

    # 1. data
    if "inspection" not in state:
        startup = measure_startup()  # before anything imports TensorFlow: a run's own start-up, for the plan
        info = inspect_data(args.data)
        defaults = pick_defaults(info, args.backbone)
        base = base_recipe(args.data, args.backbone, defaults, args.overrides)
        bad = scan_bad_files(base)
        if bad:
            defaults["data.on_bad_file"] = "skip"
            base = base_recipe(args.data, args.backbone, defaults, args.overrides)
        state.update(inspection=info, defaults=defaults, bad_files=bad, seconds={"inspect": round(time.time() - t0, 1)})
        state["startup_s"] = startup  # inside the inspection's seconds, so kept apart from them
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
    study = run_study(plan, study_dir, shard=args.shard, in_process=args.in_process, engine=args.engine,
                      ray_address=args.ray_address, runs_per_worker=args.runs_per_worker, deadline=t0 + budget_s,
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
    cal = calibration(plan, study_dir, p["costs"], p["n_eval"])
    most = (f" of at most {p['estimate_runs']} (adaptive seeds stop where comparisons are settled)"
            if plan.study.adaptive else "")
    cost_text = (f"Cost: {study['runs_done']} training runs{most}, "
                 + (f"{duration(cal['observed_s'])} of run wall time (estimated {duration(cal['estimated_s'])} for these runs)"
                    if cal else "no run time recorded")
                 + f"; probes {duration(secs.get('probe', 0))}; this call {duration(time.time() - t0)} of a {duration(p['budget_s'])} budget.")
    chance = max(state["candidates"]["chance"], 1.0 / len(state["inspection"]["classes"]))
    slowdown = cal["ratio"] if cal and cal["ratio"] else 1.0
    notes = budget_notes(study, rec, chance, p["per_seed_s"] * max(1.0, slowdown), p["budget_s"] - p["budget_left_s"])
    if slowdown > 1.2:
        notes.append(f"The runs took {slowdown:.1f}x the estimate on this machine ({cal['observed_s'] / cal['runs']:.0f} s per run "
                     f"vs {cal['estimated_s'] / cal['runs']:.0f} s from the costs measured before the study; other load slows "
                     "both); the budgets above are scaled by that.")
    state["calibration"] = cal
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
             f"{seeds_text(state['plan']['section']['seeds'])}, at most {state['plan']['estimate_runs']} runs estimated at "
             f"{duration(state['plan']['estimate_s'])} ({state['plan']['seconds_per_image']:.4g} s per training image and "
             f"~{state['plan']['run_fixed_s']:.0f} s per run besides training, measured here); the study recipe is study.yaml",
             "", "## Reset, cut and freeze against ImageNet fine-tuned end to end", ""]
    from keras_tl.study import report

    for c in a["extra_comparisons"]:
        lines.append(f"- {report.comparison_clause(dict(study, adaptive=None), c)}")
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
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="where the study's runs execute (as keras_tl.study --engine)")
    p.add_argument("--ray_address", help="--engine ray: the cluster, e.g. auto or ray://host:10001 (as keras_tl.study --ray_address)")
    p.add_argument("--runs_per_worker", type=int, default=1,
                   help="a worker process runs this many runs, then is replaced (as keras_tl.study --runs_per_worker)")
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
