"""Per-stage probes, BN domain gap and fine-tuning change: cheap evidence before and after training.

    python -m keras_tl.probe --recipe R [--weights W ...] [--reference R2] [--workdir DIR] [--set k=v ...] [--cache_dir D]
    python -m keras_tl.probe --compare RUN_DIR [--workdir DIR] [--max_images N]

Probe mode: for every ``--weights`` (imagenet | none | a file; default: the recipe's model.weights
plus none) one forward pass over the train and val splits (unaugmented) records the pooled output
of every backbone stage and the statistics of every BN layer's input; the features are cached on
disk, keyed by the weights' sha256 (or "none" + seed), the backbone and its preprocessing, the
image size/channels and the data's split hashes, so a second call does no forward pass. A linear
probe and a cosine kNN probe per stage then answer "which blocks carry features useful for my
data?". The whole backbone is probed: the recipe's model.cut_after and model.reinit are ignored.
Writes probe.json, probe.png and bn_gap.png to the workdir (default runs/probe/<recipe name>).
With ``--reference R2`` (a recipe for another dataset, same backbone, image size and channels), the
Fréchet distance per stage between the two datasets' features under each weights source is added
(probe.json "frechet", frechet.png), beside a floor: the distance between two random halves of the
target's own training features, which is what finite samples give for identical distributions.

Compare mode: for a finished ``keras_tl.train`` run, linear CKA per stage between the initial and
the fine-tuned model on the same validation images, and the relative weight change per stage.
Writes compare.json and compare.png (default: <RUN_DIR>/diagnostics).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from keras_tl import fs
from keras_tl import recipe as recipe_lib
from keras_tl.errors import DataError, UserError, WeightsError, WorkdirError


# ------------------------------------------------------------------ helpers


def _make_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"{path}: cannot create the output directory ({e.strerror or e}); choose another --workdir") from None


def default_weights(recipe: recipe_lib.Recipe) -> List[str]:
    """The recipe's model.weights plus none (random init), without duplicates."""
    return list(dict.fromkeys([recipe.model.weights, "none"]))


def recipe_for_weights(recipe: recipe_lib.Recipe, weights: str) -> recipe_lib.Recipe:
    """``recipe`` with model.weights replaced, over the whole backbone (no cut, no re-initialised stages)."""
    model = dataclasses.replace(recipe.model, weights=weights, reinit=(), cut_after=None)
    out = dataclasses.replace(recipe, model=model)
    recipe_lib.validate(out, f"--weights {weights}")
    return out


def weights_identity(info, seed: int) -> str:
    """What the features of a weights source depend on: the file's sha256, or "none" + the seed."""
    if info.source == "none":
        import keras

        return f"none:seed={seed}:keras={keras.__version__}"
    return f"{info.source}:sha256={info.sha256}"


def feature_key_parts(recipe: recipe_lib.Recipe, info, entry, data_info: dict) -> dict:
    """Everything the cached features depend on (hashed into the cache key)."""
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
    }


# --------------------------------------------------------------------- probe


def check_reference(recipe: recipe_lib.Recipe, reference: recipe_lib.Recipe) -> None:
    """The reference must be seen through the same network and input geometry as the target."""
    for key, a, b in (("model.backbone", recipe.model.backbone, reference.model.backbone),
                      ("data.image_size", list(recipe.data.image_size), list(reference.data.image_size)),
                      ("data.channels", recipe.data.channels, reference.data.channels),
                      ("data.resize", recipe.data.resize, reference.data.resize)):
        if a != b:
            raise UserError(f"--reference {reference.name}: {key} is {b!r} but the target recipe has {a!r}; "
                            f"features are only comparable through the same backbone and input (use --set {key}=...)")


def run_probe(recipe: recipe_lib.Recipe, weights: Optional[Sequence[str]] = None, workdir: Optional[str] = None, *,
              cache_dir: Optional[str] = None, datasets=None, reference: Optional[recipe_lib.Recipe] = None,
              log=print) -> dict:
    """Probe every stage of ``recipe``'s backbone under each weights source; write probe.json,
    probe.png and bn_gap.png to ``workdir``. Returns the probe.json content.

    ``datasets`` (a keras_tl.data.Datasets) skips building the data from the recipe. ``reference``
    (a recipe for another dataset) adds the per-stage Fréchet distance between the two datasets.
    """
    t0 = time.time()
    weights = list(dict.fromkeys(weights or default_weights(recipe)))
    recipes = {w: recipe_for_weights(recipe, w) for w in weights}
    if reference is not None:
        check_reference(recipe, reference)
        ref_recipes = {w: recipe_for_weights(reference, w) for w in weights}

    from keras_tl import backbones
    from keras_tl import weights as weights_lib

    # Every weights source is resolved before any data is read: a missing ImageNet file stops here.
    infos = {w: weights_lib.resolve_weights(r) for w, r in recipes.items()}
    entry = backbones.get(recipe.model.backbone)
    workdir = workdir or os.path.join("runs", "probe", recipe.name)
    _make_dir(workdir)

    from keras_tl.diagnostics import features as feats_lib
    from keras_tl.diagnostics import probes

    if datasets is None:
        from keras_tl import data as data_lib

        datasets = data_lib.build_datasets(recipe, augment=False, shuffle=False)
    if datasets.val is None:
        raise DataError("data.val_fraction: the probe needs a validation split; set data.val_fraction > 0 or data.val_split")
    class_names = list(datasets.class_names)
    cache = feats_lib.FeatureCache(cache_dir or feats_lib.default_cache_dir())

    ref_datasets = None
    if reference is not None:
        from keras_tl import data as data_lib

        ref_datasets = data_lib.build_datasets(reference, augment=False, shuffle=False)

    def features(rec, info, ds, label):
        parts = feature_key_parts(rec, info, entry, ds.info)
        key = feats_lib.cache_key(parts)
        cached = cache.load(key)
        if cached is None:
            splits, extra = _extract(rec, info, len(ds.class_names), ds, log=log, label=label)
            cache.save(key, splits, parts, extra)
            return key, False, splits, extra
        log(f"keras_tl.probe: {label}: features from the cache ({cache.path(key)})")
        return key, True, cached[0], cached[1]

    results: Dict[str, dict] = {}
    gaps: Dict[str, dict] = {}
    frechet: Dict[str, dict] = {}
    stages: Optional[List[str]] = None
    for w in weights:
        t_w = time.time()
        key, hit, splits, extra = features(recipes[w], infos[w], datasets, w)
        t_x = time.time() - t_w
        tr, va = splits["train"], splits["val"]
        stages = stages or list(tr.stages)
        t_f = time.time()
        res = probes.probe_stages(tr.stages, tr.labels, va.stages, va.labels, seed=recipe.seed)
        t_f = time.time() - t_f
        info = infos[w]
        results[w] = {**res, "weights": {"source": info.source, "path": info.path, "sha256": info.sha256},
                      "cache": {"key": key, "hit": hit}, "seconds": {"features": round(t_x, 2), "fit": round(t_f, 2)}}
        if extra.get("bn_gap") is not None:
            gaps[w] = extra["bn_gap"]
        log(f"keras_tl.probe: {w}: linear {_fmt(res['linear'])}  knn {_fmt(res['knn'])}  "
            f"(features {t_x:.1f}s{' cached' if hit else ''}, fit {t_f:.1f}s)")
        if ref_datasets is not None:
            _, _, ref_splits, _ = features(ref_recipes[w], infos[w], ref_datasets, f"{w} (reference {reference.name})")
            frechet[w] = frechet_per_stage(tr, ref_splits["train"], seed=recipe.seed)
            log(f"keras_tl.probe: {w}: Fréchet target vs {reference.name} {_fmt(frechet[w]['distance'])}  "
                f"(floor {_fmt(frechet[w]['floor'])})")

    tr_labels = splits["train"].labels
    va_labels = splits["val"].labels
    from keras_tl.diagnostics import bn_gap as gap_lib

    out = {
        "recipe": recipe.name,
        "backbone": entry.name,
        "stages": stages,
        "class_names": class_names,
        "counts": {"train": int(len(tr_labels)), "val": int(len(va_labels))},
        "chance": probes.chance_accuracy(tr_labels, va_labels),
        "probes": {"linear": "standardised features, multinomial logistic regression (L2), C from "
                             f"{list(probes.CS)} by stratified CV on train; accuracy on val",
                   "knn": f"cosine kNN majority vote, k from {list(probes.KS)} by leave-one-out on train; accuracy on val",
                   "features": "global average of each stage's output, unaugmented images"},
        "results": results,
        "bn_gap": {"measure": gap_lib.MEASURE, "results": gaps,
                   "skipped": [w for w in weights if w not in gaps]},
        "data": {"source": datasets.info.get("source"), "split_hash": datasets.info.get("split_hash")},
        "wall_time_s": round(time.time() - t0, 2),
    }
    if reference is not None:
        out["frechet"] = {
            "reference": {"recipe": reference.name, "source": ref_datasets.info.get("source"),
                          "split_hash": ref_datasets.info.get("split_hash"), "count": int(ref_splits["train"].count)},
            "measure": "Fréchet distance between Gaussians fitted to the pooled stage features of the target's and "
                       "the reference's training images (FID's formula); floor: the same distance between two random "
                       "halves of the target's training features; relative: distance / (tr C_target + tr C_reference)",
            "results": frechet,
        }
    fs.write_json(os.path.join(workdir, "probe.json"), out)
    plot_probe(out, os.path.join(workdir, "probe.png"))
    if gaps:
        plot_bn_gap(out, os.path.join(workdir, "bn_gap.png"))
    if frechet:
        plot_frechet(out, os.path.join(workdir, "frechet.png"))
    log(f"keras_tl.probe: wrote {os.path.join(workdir, 'probe.json')}")
    return out


def frechet_per_stage(target, reference, *, seed: int) -> Dict[str, list]:
    """Per stage: Fréchet distance target vs reference, its split-half floor and the relative distance."""
    import numpy as np

    from keras_tl.diagnostics import bn_gap as gap_lib

    out = {"distance": [], "floor": [], "relative": []}
    perm = np.random.default_rng(seed).permutation(target.count)
    half_a, half_b = perm[: target.count // 2], perm[target.count // 2:]
    for stage in target.stages:
        a = np.asarray(target.stages[stage], np.float64)
        b = np.asarray(reference.stages[stage], np.float64)
        d = gap_lib.frechet_distance(a, b)
        scale = float(np.trace(np.atleast_2d(np.cov(a, rowvar=False))) + np.trace(np.atleast_2d(np.cov(b, rowvar=False))))
        out["distance"].append(d)
        out["floor"].append(gap_lib.frechet_distance(a[half_a], a[half_b]))
        out["relative"].append(d / scale if scale > 0 else None)
    return out


def _fmt(values) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def _extract(recipe, info, num_classes: int, datasets, *, log, label: str):
    """One forward pass over train (with BN statistics) and val; the BN gap for pretrained weights."""
    import keras

    from keras_tl import model as model_lib
    from keras_tl.diagnostics import bn_gap as gap_lib
    from keras_tl.diagnostics import features as feats_lib

    keras.utils.set_random_seed(recipe.seed)  # weights: none is "none + seed": rebuildable
    model = model_lib.build_model(recipe, num_classes, weights_info=info)
    entry = model_lib.backbone_entry(model)
    taps = feats_lib.taps_for(model, entry)
    pretrained = info.source != "none"
    tap_model = feats_lib.build_tap_model(model, taps, bn=pretrained)
    t = time.time()
    step = feats_lib.make_step(tap_model)
    train = feats_lib.extract(tap_model, datasets.train, taps, bn=pretrained, step=step)
    val = feats_lib.extract(tap_model, datasets.val, taps, bn=False, step=step)
    log(f"keras_tl.probe: {label}: extracted {train.count}+{val.count} examples x {len(taps.stages)} stages in {time.time() - t:.1f}s")
    extra = {"bn_gap": None}
    if pretrained:
        # Random init has no pretraining data behind its running statistics (0 and 1): no gap to measure.
        extra["bn_gap"] = gap_lib.bn_gap(model.get_layer("backbone"), train.bn, dict(zip(taps.bn_layers, taps.bn_stages)),
                                         taps.stages)
    return {"train": train, "val": val}, extra


# ---------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(label: str) -> str:
    """A weights label for a legend: a file path becomes its file name."""
    label = os.path.basename(label) if os.sep in label else label
    return label if len(label) <= 28 else label[:27] + "…"


def plot_probe(probe: dict, path: str) -> None:
    """Accuracy per stage: one line per weights source, linear solid, kNN dashed, chance dotted."""
    plt = _plt()
    stages = probe["stages"]
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(stages), 3.6), dpi=110)
    x = list(range(len(stages)))
    for i, (label, r) in enumerate(probe["results"].items()):
        color = f"C{i}"
        short = _short(label)
        ax.plot(x, r["linear"], "-o", color=color, label=f"{short} linear")
        ax.plot(x, r["knn"], "--s", color=color, alpha=0.7, label=f"{short} kNN")
    ax.axhline(probe["chance"], color="grey", ls=":", lw=1, label="majority class")
    ax.set_xticks(x, stages)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("stage (pooled output)")
    ax.set_ylabel("val accuracy")
    ax.set_title(f"{probe['recipe']}: {probe['backbone']} per-stage probes", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_frechet(probe: dict, path: str) -> None:
    """Relative Fréchet distance target vs reference per stage, one line per weights source, floor dotted."""
    plt = _plt()
    stages = probe["stages"]
    x = list(range(len(stages)))
    fr = probe["frechet"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    for i, (label, r) in enumerate(fr["results"].items()):
        scale = [d / rel if rel else float("nan") for d, rel in zip(r["distance"], r["relative"])]
        ax.plot(x, r["relative"], "-o", color=f"C{i}", label=f"{_short(label)}")
        ax.plot(x, [f / s for f, s in zip(r["floor"], scale)], ":", color=f"C{i}", label=f"{_short(label)} floor (split half)")
    ax.set_xticks(x, stages)
    ax.set_ylabel("Fréchet distance / (tr C_t + tr C_r)")
    ax.set_title(f"{probe['recipe']} vs {fr['reference']['recipe']}: feature-space distance per stage", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_bn_gap(probe: dict, path: str) -> None:
    """Per stage: mean symmetric KL (log scale) and mean normalised shift, per weights source."""
    plt = _plt()
    stages = probe["stages"]
    fig, axes = plt.subplots(1, 2, figsize=(2.5 + 1.6 * len(stages), 3.4), dpi=110)
    x = list(range(len(stages)))
    for i, (label, g) in enumerate(probe["bn_gap"]["results"].items()):
        for ax, key in zip(axes, ("sym_kl", "mean_shift")):
            ys = [v if v is not None else float("nan") for v in g[key]]
            ax.plot(x, ys, "-o", color=f"C{i}", label=_short(label))
    axes[0].set_yscale("log")
    axes[0].set_ylabel("symmetric KL (mean over BN layers)")
    axes[1].set_ylabel("|mean shift| / running std")
    for ax in axes:
        ax.set_xticks(x, stages)
        ax.set_xlabel("stage")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{probe['recipe']}: data vs BN running statistics", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------- compare


def load_run_model(path: str):
    """A .keras file written by keras_tl, loaded in safe mode (keras_tl's custom layers registered)."""
    import keras

    import keras_tl.model  # noqa: F401  (registers the custom layers)

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load the model ({' '.join(str(e).split())[:200]}); expected a .keras file written by keras_tl") from None


def _frozen_stages(run_info: dict, stages: Sequence[str]) -> List[str]:
    """Stages with no trainable parameter in any phase of the run (from run.json)."""
    phases = run_info.get("phases") or []
    if not phases:
        return []
    trained = set()
    for ph in phases:
        for row in ph.get("stages", []):
            if row.get("trainable_params", 0) > 0:
                trained.add(row.get("stage"))
    return [s for s in stages if s not in trained]


def run_compare(run_dir: str, workdir: Optional[str] = None, *, max_images: int = 256, log=print) -> dict:
    """CKA per stage (initial vs fine-tuned model, same val images) and relative weight change
    per stage for a finished keras_tl.train run; writes compare.json and compare.png."""
    t0 = time.time()
    recipe_path = os.path.join(run_dir, "recipe.yaml")
    model_path = os.path.join(run_dir, "export", "model.keras")
    for p, what in ((recipe_path, "recipe.yaml"), (model_path, "export/model.keras")):
        if not os.path.isfile(p):
            raise WorkdirError(f"{run_dir}: no {what}; --compare needs a finished keras_tl.train run directory with a .keras export")
    recipe = recipe_lib.load(recipe_path)
    run_info = {}
    if os.path.isfile(os.path.join(run_dir, "run.json")):
        run_info = json.loads(fs.read_text(os.path.join(run_dir, "run.json")))

    from keras_tl import weights as weights_lib

    info = weights_lib.resolve_weights(recipe)
    recorded = (run_info.get("weights") or {}).get("sha256")
    if info.source != "none" and recorded and info.sha256 != recorded:
        raise WeightsError(f"model.weights: {info.path} has sha256 {info.sha256[:12]}…, the run started from {recorded[:12]}…; "
                           "restore the original weights file to compare against the run's initial model")
    workdir = workdir or os.path.join(run_dir, "diagnostics")
    _make_dir(workdir)

    import keras
    import numpy as np

    from keras_tl import backbones
    from keras_tl import data as data_lib
    from keras_tl import model as model_lib
    from keras_tl.diagnostics import cka as cka_lib

    tuned = load_run_model(model_path)
    num_classes = len((run_info.get("data") or {}).get("class_names") or []) or None
    datasets = data_lib.build_datasets(recipe, augment=False, shuffle=False)
    num_classes = num_classes or len(datasets.class_names)
    keras.utils.set_random_seed(recipe.seed)  # as keras_tl.train does before building the model
    initial = model_lib.build_model(recipe, num_classes, weights_info=info)
    entry = backbones.get(recipe.model.backbone)

    images = []
    ds = datasets.val if datasets.val is not None else datasets.train
    n = 0
    for x, _ in ds:
        images.append(np.asarray(x))
        n += len(images[-1])
        if n >= max_images:
            break
    images = np.concatenate(images)[:max_images]
    s0, s1 = model_lib.stage_model(initial), model_lib.stage_model(tuned)
    summaries0: Dict[str, list] = {}
    summaries1: Dict[str, list] = {}
    bs = recipe.data.batch_size
    for i in range(0, len(images), bs):
        for sm, acc in ((s0, summaries0), (s1, summaries1)):
            out = sm(images[i:i + bs], training=False)
            for stage, fmap in out.items():
                acc.setdefault(stage, []).append(cka_lib.spatial_summary(np.asarray(fmap, np.float32)))
    stages = [s for s in entry.stages if s in summaries0 and s in summaries1]
    cka = [cka_lib.linear_cka(np.concatenate(summaries0[s]), np.concatenate(summaries1[s])) for s in stages]
    change = cka_lib.relative_weight_change(initial, tuned, lambda name: backbones.stage_of(entry, name))
    frozen = _frozen_stages(run_info, stages)
    moved = {s: change.get(s, 0.0) for s in frozen if change.get(s, 0.0) > 1e-6}
    if info.source == "none":
        how = f"rebuilt with seed {recipe.seed} (weights: none)"
    else:
        how = f"{info.source} weights {info.path} (sha256 {info.sha256[:12]}…)" + (f", stages {list(recipe.model.reinit)} re-initialised with seed {recipe.seed}" if recipe.model.reinit else "")
    check = ("not checkable: every stage trained in some phase" if not frozen else
             "ok: stages frozen in every phase are unchanged" if not moved else
             f"FAILED: stages frozen in every phase differ from the rebuilt initial model {moved}; the initial weights are not reproduced exactly")
    out = {
        "run_dir": run_dir,
        "stages": stages,
        "cka": cka,
        "relative_weight_change": [change.get(s) for s in stages],
        "head_relative_weight_change": change.get("head"),
        "initial_weights": how,
        "initial_weights_check": check,
        "frozen_stages": frozen,
        "images": int(len(images)),
        "cka_features": "linear CKA on each stage's output average-pooled to at most 4x4 positions, flattened",
        "weight_change": "||theta - theta0|| / ||theta0|| over each stage's learned parameters (BN moving statistics excluded)",
        "wall_time_s": round(time.time() - t0, 2),
    }
    fs.write_json(os.path.join(workdir, "compare.json"), out)
    plot_compare(out, os.path.join(workdir, "compare.png"))
    log(f"keras_tl.probe: CKA {_fmt(cka)}; weight change {_fmt([change.get(s, 0.0) for s in stages])}; {check}")
    log(f"keras_tl.probe: wrote {os.path.join(workdir, 'compare.json')}")
    return out


def plot_compare(cmp: dict, path: str) -> None:
    plt = _plt()
    stages = cmp["stages"]
    fig, axes = plt.subplots(1, 2, figsize=(2.5 + 1.6 * len(stages), 3.2), dpi=110)
    x = list(range(len(stages)))
    axes[0].bar(x, cmp["cka"], color="C0")
    axes[0].set_ylim(0, 1.02)
    axes[0].set_ylabel("linear CKA (initial vs fine-tuned)")
    axes[1].bar(x, [v or 0.0 for v in cmp["relative_weight_change"]], color="C1")
    axes[1].set_ylabel("||θ−θ₀|| / ||θ₀||")
    for ax in axes:
        ax.set_xticks(x, stages)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{os.path.basename(os.path.normpath(cmp['run_dir']))}: what fine-tuning changed", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m keras_tl.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", help="recipe YAML (probe mode)")
    p.add_argument("--weights", action="append", default=[],
                   help="imagenet | none | a weights file; repeatable (default: the recipe's model.weights and none)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="K=V", help="recipe override, repeatable")
    p.add_argument("--reference", metavar="RECIPE", help="a recipe for another dataset (same backbone and input): Fréchet distance per stage")
    p.add_argument("--workdir", help="output directory (probe: runs/probe/<recipe name>; compare: RUN_DIR/diagnostics)")
    p.add_argument("--cache_dir", help="feature cache directory (default $KERAS_TL_CACHE/features or ~/.cache/keras_tl/features)")
    p.add_argument("--compare", metavar="RUN_DIR", help="a finished keras_tl.train run: CKA and weight change per stage")
    p.add_argument("--max_images", type=int, default=256, help="compare mode: validation images used for CKA")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.compare:
            if args.recipe or args.weights or args.reference:
                raise UserError("--compare takes a run directory only; drop --recipe/--weights/--reference (the run's recipe.yaml is used)")
            if args.max_images < 2:
                raise UserError(f"--max_images: CKA needs at least 2 images, got {args.max_images}")
            run_compare(args.compare, args.workdir, max_images=args.max_images)
            return 0
        if not args.recipe:
            raise UserError("--recipe is required, e.g. python -m keras_tl.probe --recipe recipes/probe_smoke.yaml (or --compare RUN_DIR)")
        recipe = recipe_lib.load(args.recipe, args.overrides)
        reference = recipe_lib.load(args.reference, args.overrides) if args.reference else None
        run_probe(recipe, args.weights or None, args.workdir, cache_dir=args.cache_dir, reference=reference)
        return 0
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
