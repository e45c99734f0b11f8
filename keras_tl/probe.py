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

from keras_tl import cli, fs
from keras_tl import recipe as recipe_lib
from keras_tl.errors import DataError, UserError, WeightsError, WorkdirError


# ------------------------------------------------------------------ helpers


def _make_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"{path}: cannot create the output directory ({e.strerror or e}); choose another --workdir") from None


def _fmt(values) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def default_weights(recipe: recipe_lib.Recipe) -> List[str]:
    """The recipe's model.weights plus none (random init), without duplicates."""
    return list(dict.fromkeys([recipe.model.weights, "none"]))


def recipe_for_weights(recipe: recipe_lib.Recipe, weights: str) -> recipe_lib.Recipe:
    """``recipe`` with model.weights replaced, over the whole backbone (no cut, no re-initialised stages)."""
    model = dataclasses.replace(recipe.model, weights=weights, reinit=(), cut_after=None)
    out = dataclasses.replace(recipe, model=model)
    recipe_lib.validate(out, f"--weights {weights}")
    return out


def check_reference(recipe: recipe_lib.Recipe, reference: recipe_lib.Recipe) -> None:
    """The reference must be seen through the same network and input geometry as the target."""
    for key, a, b in (("model.backbone", recipe.model.backbone, reference.model.backbone),
                      ("data.image_size", list(recipe.data.image_size), list(reference.data.image_size)),
                      ("data.channels", recipe.data.channels, reference.data.channels),
                      ("data.resize", recipe.data.resize, reference.data.resize)):
        if a != b:
            raise UserError(f"--reference {reference.name}: {key} is {b!r} but the target recipe has {a!r}; "
                            f"features are only comparable through the same backbone and input (use --set {key}=...)")


# --------------------------------------------------------------------- probe


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
    from keras_tl import data as data_lib
    from keras_tl import weights as weights_lib
    from keras_tl.diagnostics import features as feats_lib
    from keras_tl.diagnostics import frechet as frechet_lib

    # Every weights source is resolved before any data is read: a missing ImageNet file stops here.
    infos = {w: weights_lib.resolve_weights(r) for w, r in recipes.items()}
    entry = backbones.get(recipe.model.backbone)
    workdir = workdir or os.path.join("runs", "probe", recipe.name)
    _make_dir(workdir)
    if datasets is None:
        datasets = data_lib.build_datasets(recipe, augment=False, shuffle=False)
    if datasets.val is None:
        raise DataError("data.val_fraction: the probe needs a validation split; set data.val_fraction > 0 or data.val_split")
    ref_datasets = data_lib.build_datasets(reference, augment=False, shuffle=False) if reference is not None else None
    cache = feats_lib.FeatureCache(cache_dir or feats_lib.default_cache_dir())

    results: Dict[str, dict] = {}
    gaps: Dict[str, dict] = {}
    frechet: Dict[str, dict] = {}
    for w in weights:
        splits, results[w], gap = _probe_one(w, recipes[w], infos[w], entry, datasets, cache, log)
        if gap is not None:
            gaps[w] = gap
        if ref_datasets is not None:
            _, _, ref_splits, _ = feats_lib.cached_splits(cache, ref_recipes[w], infos[w], entry, ref_datasets, log=log,
                                                          label=f"{w} (reference {reference.name})")
            frechet[w] = frechet_lib.frechet_per_stage(splits["train"], ref_splits["train"], seed=recipe.seed)
            log(f"keras_tl.probe: {w}: Fréchet target vs {reference.name} {_fmt(frechet[w]['distance'])}  "
                f"(floor {_fmt(frechet[w]['floor'])})")

    out = _probe_record(recipe, entry, weights, datasets, splits, results, gaps)
    out["wall_time_s"] = round(time.time() - t0, 2)
    if reference is not None:
        out["frechet"] = {
            "reference": {"recipe": reference.name, "source": ref_datasets.info.get("source"),
                          "split_hash": ref_datasets.info.get("split_hash"), "count": int(ref_splits["train"].count)},
            "measure": frechet_lib.MEASURE,
            "results": frechet,
        }
    _write_probe(out, workdir)
    log(f"keras_tl.probe: wrote {os.path.join(workdir, 'probe.json')}")
    return out


def _probe_one(w: str, recipe, info, entry, datasets, cache, log):
    """Features (cached) and both probes for one weights source: (splits, result, BN gap or None)."""
    from keras_tl.diagnostics import features as feats_lib
    from keras_tl.diagnostics import probes

    t_w = time.time()
    key, hit, splits, extra = feats_lib.cached_splits(cache, recipe, info, entry, datasets, log=log, label=w)
    t_x = time.time() - t_w
    tr, va = splits["train"], splits["val"]
    t_f = time.time()
    res = probes.probe_stages(tr.stages, tr.labels, va.stages, va.labels, seed=recipe.seed)
    t_f = time.time() - t_f
    log(f"keras_tl.probe: {w}: linear {_fmt(res['linear'])}  knn {_fmt(res['knn'])}  "
        f"(features {t_x:.1f}s{' cached' if hit else ''}, fit {t_f:.1f}s)")
    result = {**res, "weights": {"source": info.source, "path": info.path, "sha256": info.sha256},
              "cache": {"key": key, "hit": hit}, "seconds": {"features": round(t_x, 2), "fit": round(t_f, 2)}}
    return splits, result, extra.get("bn_gap")


def _probe_record(recipe, entry, weights, datasets, splits, results, gaps) -> dict:
    """probe.json's content (without the Fréchet section and the wall time)."""
    from keras_tl.diagnostics import bn_gap as gap_lib
    from keras_tl.diagnostics import probes

    tr_labels, va_labels = splits["train"].labels, splits["val"].labels
    return {
        "recipe": recipe.name,
        "backbone": entry.name,
        "stages": list(splits["train"].stages),
        "class_names": list(datasets.class_names),
        "counts": {"train": int(len(tr_labels)), "val": int(len(va_labels))},
        "chance": probes.chance_accuracy(tr_labels, va_labels),
        "probes": {"linear": "standardised features, multinomial logistic regression (L2), C from "
                             f"{list(probes.CS)} by stratified CV on train; accuracy on val",
                   "knn": f"cosine kNN majority vote, k from {list(probes.KS)} by leave-one-out on train; accuracy on val",
                   "features": "global average of each stage's output, unaugmented images"},
        "results": results,
        "bn_gap": {"measure": gap_lib.MEASURE, "results": gaps,
                   "skipped": [w for w in weights if w not in gaps]},
        "data": {"source": datasets.info.get("source"), "split_hash": datasets.info.get("split_hash"),
                 "nan": datasets.info.get("nan", {}).get("policy"), "scale": datasets.info.get("scale")},
    }


def _write_probe(out: dict, workdir: str) -> None:
    from keras_tl.diagnostics import plots

    fs.write_json(os.path.join(workdir, "probe.json"), out)
    plots.plot_probe(out, os.path.join(workdir, "probe.png"))
    if out["bn_gap"]["results"]:
        plots.plot_bn_gap(out, os.path.join(workdir, "bn_gap.png"))
    if out.get("frechet", {}).get("results"):
        plots.plot_frechet(out, os.path.join(workdir, "frechet.png"))


# ------------------------------------------------------------------- compare


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


def _load_run(run_dir: str):
    """(recipe, run.json content, path of the .keras export) of a finished keras_tl.train run."""
    recipe_path = os.path.join(run_dir, "recipe.yaml")
    model_path = os.path.join(run_dir, "export", "model.keras")
    for p, what in ((recipe_path, "recipe.yaml"), (model_path, "export/model.keras")):
        if not os.path.isfile(p):
            raise WorkdirError(f"{run_dir}: no {what}; --compare needs a finished keras_tl.train run directory with a .keras export")
    recipe = recipe_lib.load(recipe_path)
    run_info = {}
    if os.path.isfile(os.path.join(run_dir, "run.json")):
        run_info = json.loads(fs.read_text(os.path.join(run_dir, "run.json")))
    return recipe, run_info, model_path


def _val_images(datasets, max_images: int):
    """Up to ``max_images`` validation images (train images when there is no val split)."""
    import numpy as np

    images, n = [], 0
    for x, _ in (datasets.val if datasets.val is not None else datasets.train):
        images.append(np.asarray(x))
        n += len(images[-1])
        if n >= max_images:
            break
    return np.concatenate(images)[:max_images]


def run_compare(run_dir: str, workdir: Optional[str] = None, *, max_images: int = 256, log=print) -> dict:
    """CKA per stage (initial vs fine-tuned model, same val images) and relative weight change
    per stage for a finished keras_tl.train run; writes compare.json and compare.png."""
    t0 = time.time()
    recipe, run_info, model_path = _load_run(run_dir)

    from keras_tl import weights as weights_lib

    info = weights_lib.resolve_weights(recipe)
    recorded = (run_info.get("weights") or {}).get("sha256")
    if info.source != "none" and recorded and info.sha256 != recorded:
        raise WeightsError(f"model.weights: {info.path} has sha256 {info.sha256[:12]}…, the run started from {recorded[:12]}…; "
                           "restore the original weights file to compare against the run's initial model")
    workdir = workdir or os.path.join(run_dir, "diagnostics")
    _make_dir(workdir)

    import keras

    from keras_tl import backbones
    from keras_tl import data as data_lib
    from keras_tl import layers
    from keras_tl import model as model_lib
    from keras_tl.diagnostics import cka as cka_lib
    from keras_tl.diagnostics import plots

    tuned = layers.load_keras_model(model_path)
    datasets = data_lib.build_datasets(recipe, augment=False, shuffle=False)
    num_classes = len((run_info.get("data") or {}).get("class_names") or []) or len(datasets.class_names)
    keras.utils.set_random_seed(recipe.seed)  # as keras_tl.train does before building the model
    initial = model_lib.build_model(recipe, num_classes, weights_info=info)
    entry = backbones.get(recipe.model.backbone)
    images = _val_images(datasets, max_images)
    stages, cka = cka_lib.cka_per_stage(initial, tuned, images, entry.stages, recipe.data.batch_size)
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
    plots.plot_compare(out, os.path.join(workdir, "compare.png"))
    log(f"keras_tl.probe: CKA {_fmt(cka)}; weight change {_fmt([change.get(s, 0.0) for s in stages])}; {check}")
    log(f"keras_tl.probe: wrote {os.path.join(workdir, 'compare.json')}")
    return out


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
    cli.setup_output()
    return cli.run(_main, _parser().parse_args(argv))


def _main(args) -> None:
    if args.compare:
        if args.recipe or args.weights or args.reference:
            raise UserError("--compare takes a run directory only; drop --recipe/--weights/--reference (the run's recipe.yaml is used)")
        if args.max_images < 2:
            raise UserError(f"--max_images: CKA needs at least 2 images, got {args.max_images}")
        run_compare(args.compare, args.workdir, max_images=args.max_images)
        return
    if not args.recipe:
        raise UserError("--recipe is required, e.g. python -m keras_tl.probe --recipe recipes/probe_smoke.yaml (or --compare RUN_DIR)")
    recipe = recipe_lib.load(args.recipe, args.overrides)
    reference = recipe_lib.load(args.reference, args.overrides) if args.reference else None
    run_probe(recipe, args.weights or None, args.workdir, cache_dir=args.cache_dir, reference=reference)


if __name__ == "__main__":
    sys.exit(main())
