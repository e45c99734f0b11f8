"""Train one recipe and export the model.

    python -m keras_tl.train --recipe recipes/telescope.yaml [--set k=v ...] [--workdir DIR | --resume]

The entry point only parses, validates and delegates (as in TF Model Garden's
``official/vision/train.py``): the recipe is loaded and validated before
TensorFlow is imported, so a typo costs milliseconds, not a model build.
:func:`run` reads top to bottom: check the run directory, pre-flight (runtime, weights,
data: nothing written yet), create the directory, one call per phase, evaluate, export,
records. The run directory's layout and resume rules live in :mod:`keras_tl.checkpoint`,
optimizers in :mod:`keras_tl.optim`, metrics in :mod:`keras_tl.evaluate`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import socket
import sys
import time
from typing import Any, Callable, Dict, Optional

import argparse

from keras_tl import checkpoint, cli, evaluate, faults, fs
from keras_tl import recipe as recipe_lib
from keras_tl.errors import UserError


@dataclasses.dataclass(frozen=True)
class Context:
    """What every step of one run reads, fixed once the pre-flight has passed."""

    recipe: recipe_lib.Recipe
    runtime: Any  # keras_tl.distribute.Runtime
    weights: Any  # keras_tl.weights.WeightsInfo, resolved once
    scan: dict  # keras_tl.data.scan's result, read once
    datasets: Any  # keras_tl.data.Datasets
    log: Callable[..., None]
    t_start: float
    out: str = ""  # the run directory; a throw-away temp dir on non-chief workers


def run(recipe: recipe_lib.Recipe, workdir: Optional[str] = None, *, tpu_flags: Optional[dict] = None,
        log=print) -> Dict[str, Any]:
    """Train ``recipe`` in ``workdir`` (resuming an unfinished run there) and export it.

    Returns the final metrics (also written to ``metrics.json``).
    """
    t_start = time.time()
    workdir = workdir or checkpoint.default_workdir(recipe)
    # The checks and the pre-flight write nothing: a run that cannot start leaves no directory
    # behind, so the user's corrected recipe is not refused as "a different recipe".
    resuming = checkpoint.check_workdir(workdir, recipe)
    ctx = preflight(recipe, tpu_flags, log, t_start)
    created = checkpoint.create_workdir(workdir, recipe, resuming)
    # One process trains in a run directory at a time (non-chief workers write elsewhere).
    lock = checkpoint.RunLock(workdir)
    try:
        if ctx.runtime.is_chief:
            lock.acquire()  # on failure the directory belongs to the process holding it: nothing is removed
        metrics = _run_locked(recipe, workdir, ctx, resuming, created, log, t_start)
    except BaseException:
        lock.release()
        raise
    lock.release(remove=True)
    return metrics


def _run_locked(recipe, workdir, ctx, resuming, created, log, t_start) -> Dict[str, Any]:
    log(f"keras_tl: {'resuming the unfinished run in' if resuming else 'run directory'} {workdir}")
    trap = recipe_lib.head_first_on_random_backbone(recipe)
    if trap:
        log(f"keras_tl: WARNING: {trap}")
    with checkpoint.removed_on_user_error(workdir, created):
        ctx = dataclasses.replace(ctx, out=_output_dir(workdir, ctx))
        model = _build_model(ctx)
        state = _restore(model, ctx)
        for index, phase in enumerate(recipe.train.phases):
            if index >= len(state.phases):
                state.record(index, train_phase(model, index, phase, ctx))
        splits = [s for s in ("val", "test") if ctx.datasets.counts.get(s)]
        log(f"keras_tl: evaluating on {' and '.join(f'{s} ({ctx.datasets.counts[s]} images)' for s in splits)}")
        t_eval = time.time()
        results, final_split = evaluate.evaluate_run(model, ctx.datasets, recipe, ctx.out)
        t_export = time.time()
        if recipe.export.savedmodel or recipe.export.keras:
            log(f"keras_tl: exporting to {os.path.join(ctx.out, 'export')} (written, reloaded and checked)")
        export_info = export_model(model, ctx)
        # The run's own evaluate and export time, for a study's overhead (tools/bench.py study).
        timings = {"evaluate": round(t_export - t_eval, 2), "export": round(time.time() - t_export, 2)}
        metrics = write_records(ctx, state, results, final_split, export_info, timings)
    if not ctx.runtime.is_chief:
        shutil.rmtree(ctx.out, ignore_errors=True)
    size = ""
    if ctx.runtime.is_chief:
        checkpoint.prune_after_done(ctx.out, recipe)
        nbytes = checkpoint.disk_usage(ctx.out)
        size = f" ({nbytes / 2**20:,.0f} MB{'' if recipe.train.keep_checkpoints else '; checkpoints deleted, train.keep_checkpoints: true keeps them'})" if nbytes else ""
    summary = results[final_split]
    log(f"keras_tl: done in {_duration(time.time() - t_start)}: {final_split} accuracy {summary.get('accuracy', float('nan')):.4f}, "
        f"loss {summary.get('loss', float('nan')):.4f}; {ctx.out}{size}")
    return metrics


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# ------------------------------------------------------------------ pre-flight


def preflight(recipe: recipe_lib.Recipe, tpu_flags: Optional[dict], log, t_start: float) -> Context:
    """Runtime, weights and data, in that order, writing nothing: a missing ImageNet file stops
    the run in seconds, before any data is read."""
    from keras_tl import distribute
    from keras_tl import weights as weights_lib

    # Weights first (no TensorFlow needed): a missing or damaged ImageNet file is downloaded and
    # verified, or stops the run with nothing written, within the download timeout rather than
    # after TensorFlow's start-up.
    weights = weights_lib.resolve_weights(recipe)
    runtime = distribute.setup(recipe, tpu_flags=tpu_flags)

    import keras
    import tensorflow as tf

    from keras_tl import data as data_lib

    keras.utils.set_random_seed(recipe.seed)
    if recipe.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    scan = data_lib.scan(recipe)
    datasets = data_lib.build_datasets(recipe, global_batch_size=recipe.data.batch_size,
                                       drop_remainder=runtime.needs_static_shapes, scanned=scan)
    if datasets.val is None:  # val_fraction > 0 (recipe.validate) but too few images to carve one
        raise UserError(f"data.val_fraction: the validation split is empty ({datasets.counts['train']} training images); "
                        "keras_tl picks each phase's best epoch on validation data, so add images or raise data.val_fraction")
    return Context(recipe, runtime, weights, scan, datasets, log, t_start)


def _output_dir(workdir: str, ctx: Context) -> str:
    out = workdir
    if not ctx.runtime.is_chief:
        # Multi-worker: every worker runs the same steps, only the chief's files are kept.
        import tempfile

        out = tempfile.mkdtemp(prefix=f"keras_tl-worker{(ctx.runtime.task or {}).get('index', 'x')}-")
    if ctx.scan and ctx.scan.get("skipped_files"):
        fs.write_json(os.path.join(out, "skipped_files.json"), ctx.scan)
        ctx.log(f"keras_tl: skipping {len(ctx.scan['skipped_files'])} unreadable files (listed in skipped_files.json)")
    return out


def _build_model(ctx: Context):
    from keras_tl import model as model_lib

    with ctx.runtime.strategy.scope():
        return model_lib.build_model(ctx.recipe, len(ctx.datasets.class_names), weights_info=ctx.weights)


def _restore(model, ctx: Context) -> checkpoint.RunState:
    """The finished phases of an unfinished run, with the weights the last one ended with."""
    state = checkpoint.RunState.load(ctx.out)
    if state.phases:
        last = state.phases[-1]
        checkpoint.load_weights(model, last["weights"])
        n, total = len(state.phases), len(ctx.recipe.train.phases)
        done = f"phase 1/{total}" if n == 1 else f"phases 1-{n}/{total}"
        ctx.log(f"keras_tl: {done} already done; loaded {last['weights']}")
    return state


# ---------------------------------------------------------------------- phases


def train_phase(model, index: int, phase: recipe_lib.Phase, ctx: Context) -> dict:
    """Train one phase (on cached features when the fast path applies); its state.json record."""
    from keras_tl import freeze, optim

    recipe, runtime = ctx.recipe, ctx.runtime
    label = phase.name or f"phase{index}"
    rows = freeze.apply_phase(model, phase, recipe)
    n_phases = len(recipe.train.phases)
    where = f"phase {index + 1}/{n_phases} ({label})"
    ctx.log(f"keras_tl: {where}: {phase.epochs} epochs, {phase.optimizer} lr {phase.lr}, trainable:\n{freeze.format_table(rows)}")
    n_train, batch = ctx.datasets.counts["train"], recipe.data.batch_size
    steps_per_epoch = phase.steps_per_epoch or (max(1, n_train // batch) if runtime.needs_static_shapes
                                                else max(1, math.ceil(n_train / batch)))
    reason = fast_path_reason(recipe, rows, runtime)
    t_phase = time.time()
    callbacks = (checkpoint.resume_callbacks(ctx.out, index, label, recipe.train.monitor) + _observers(recipe, ctx.out, label)
                 + [_progress(index, recipe, ctx)])
    num_outputs = int(model.output.shape[-1])
    with runtime.strategy.scope():
        loss, metrics = optim.loss_and_metrics(num_outputs, phase, recipe.train.top_k)
        optimizer = optim.make_optimizer(phase, steps_per_epoch)
    compile_args = dict(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=runtime.jit_compile,
                        steps_per_execution=recipe.train.steps_per_execution)
    # shuffle=False: the tf.data pipeline already shuffles (Keras ignores the flag for datasets and warns).
    fit_args = dict(epochs=phase.epochs, verbose=1 if sys.stdout.isatty() else 2, callbacks=callbacks, shuffle=False)
    if recipe.data.class_weights and ctx.datasets.class_weights:
        fit_args["class_weight"] = {int(k): float(v) for k, v in ctx.datasets.class_weights.items()}
    if phase.steps_per_epoch:
        fit_args["steps_per_epoch"] = phase.steps_per_epoch
    if reason is None:
        ctx.log(f"keras_tl: {where}: frozen backbone, no augmentation: training the head on cached features")
        hist, extract_s = _fit_head_on_features(model, index, phase, ctx, compile_args, fit_args)
    else:
        ctx.log(f"keras_tl: {where}: full forward/backward path ({reason})")
        hist, extract_s = _fit_full(model, index, phase, ctx, compile_args, fit_args), None
    phase_weights = checkpoint.phase_weights_path(ctx.out, index)
    checkpoint.save_weights(model, phase_weights)
    history = (checkpoint.read_csv_log(checkpoint.csv_log_path(ctx.out, index, label))
               or {k: [float(v) for v in vals] for k, vals in hist.history.items()})
    epochs_run = len(next(iter(history.values()), []))
    warning = chance_warning(history, ctx.datasets.class_counts.get("val"), num_outputs, phase, recipe, rows,
                             bn=(_bn_momentum(model), epochs_run * steps_per_epoch))
    if warning:
        ctx.log(f"keras_tl: WARNING: {where}: {warning}")
    return {
        "name": label, "weights": phase_weights, "history": history, "stages": rows,
        "trainable_params": int(sum(r["trainable_params"] for r in rows)),
        "epochs_run": epochs_run,
        "images_seen": int(epochs_run * (phase.steps_per_epoch * batch if phase.steps_per_epoch else n_train)),
        "wall_time_s": round(time.time() - t_phase, 2),
        "path": "cached_features" if reason is None else "full",
        "feature_extraction_s": extract_s,
        "fast_path_skipped_because": reason,
    }


def _progress(index: int, recipe: recipe_lib.Recipe, ctx: Context):
    """One line after each epoch: where the run is, its elapsed time and an ETA for the whole run.

    The ETA assumes every remaining epoch costs what this phase's epochs cost so far (a phase on
    cached features is cheaper, a phase training more stages dearer: hence the "~")."""
    import keras

    phases = recipe.train.phases

    class Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.t0, self.epochs = time.time(), 0

        def on_epoch_end(self, epoch, logs=None):
            self.epochs += 1
            per_epoch = (time.time() - self.t0) / self.epochs
            left = (phases[index].epochs - epoch - 1) + sum(p.epochs for p in phases[index + 1:])
            ctx.log(f"keras_tl: phase {index + 1}/{len(phases)} epoch {epoch + 1}/{phases[index].epochs}; "
                    f"elapsed {_duration(time.time() - ctx.t_start)}, run ETA ~{_duration(left * per_epoch)} "
                    "+ evaluation and export")

    return Progress()


def _bn_momentum(model) -> Optional[float]:
    """The highest momentum among the model's trainable BatchNormalization layers (None: none train)."""
    import keras

    found, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            found.append(float(layer.momentum))
        stack.extend(getattr(layer, "layers", []))
    return max(found) if found else None


def chance_warning(history: dict, val_class_counts, num_outputs: int, phase, recipe, rows,
                   bn: Optional[tuple] = None) -> Optional[str]:
    """What it means when a phase's validation accuracy never left chance (the majority-class rate)
    or its validation loss never left ln(classes) (uniform predictions); None when it learned.

    ``bn``: (momentum of the trainable BN layers or None, training steps in this phase), for the
    numbers of the BN-lag advice."""
    if num_outputs < 2 or not val_class_counts or not history.get("val_accuracy"):
        return None
    n_val, k = sum(val_class_counts), len(val_class_counts)
    chance = max(val_class_counts) / n_val
    # Above chance by more than two binomial standard errors of the validation set counts as learning.
    margin = max(0.01, 2 * math.sqrt(chance * (1 - chance) / n_val))
    best_val = max(history["val_accuracy"])
    at_chance = best_val <= chance + margin
    uniform = bool(history.get("val_loss")) and min(history["val_loss"]) >= 0.98 * math.log(k)
    if not (at_chance or uniform):
        return None
    what = (f"validation accuracy stayed at chance (best {best_val:.3f}; majority class {chance:.3f} of {n_val} images)" if at_chance
            else f"validation loss stayed at ln({k}) = {math.log(k):.4f} (best {min(history['val_loss']):.4f}): "
                 "it predicts every class equally")
    train_acc = max(history.get("accuracy") or [0.0])
    backbone_frozen = all(r["trainable_params"] == 0 for r in rows if r["stage"] != "head")
    if phase.lr == 0:
        why = "the learning rate is 0: set this phase's lr"
    elif train_acc > chance + max(0.1, 2 * margin):
        momentum, steps = bn or (None, 0)
        stale = momentum ** steps if momentum and steps else 0.0
        # The moving statistics weigh their initial values by momentum**steps. Measured on a real
        # 10-step run (tests/test_progress.py's stripes): a weight of 0.095 (momentum 0.79) still
        # scored chance in inference mode, 0.0098 (momentum 0.63) scored 1.0; so aim at 0.01.
        fix = (f"after {steps} steps at momentum {momentum:g} they still weigh their initial values by {stale:.2f}: "
               f"set model.bn_momentum to {math.floor(100 * 0.01 ** (1 / steps)) / 100:g} or lower, or train more steps"
               if stale > 0.01 else "lower model.bn_momentum, e.g. 0.9, or train more epochs")
        why = (f"training accuracy reached {train_acc:.3f}, so the model learns in training mode but not in inference mode: "
               f"BatchNorm moving statistics lag behind the weights ({fix})")
    elif backbone_frozen and recipe.model.weights == "none":
        why = ("the head is trained on a frozen, randomly initialised backbone, whose features carry little; "
               "train backbone stages in this phase or use pretrained weights (model.weights: imagenet or a file)")
    else:
        why = (f"nothing was learned at lr {phase.lr:g} in {len(history['val_accuracy'])} epochs: try a 10x lower lr "
               "(too high a rate collapses training to one class), a 10x higher one, or more epochs")
    return f"{what}; {why}"


def _observers(recipe: recipe_lib.Recipe, out: str, label: str) -> list:
    """TensorBoard and early stopping, as the recipe asks."""
    import keras

    callbacks = []
    if recipe.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out, "tensorboard", label), write_graph=False))
    if recipe.train.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=recipe.train.monitor, patience=recipe.train.early_stopping,
                                                       mode="auto"))
    return callbacks


def _fit_full(model, index: int, phase: recipe_lib.Phase, ctx: Context, compile_args: dict, fit_args: dict):
    """Every image through the whole model; the phase ends on its best epoch's weights."""
    from keras_tl import optim

    num_outputs = int(model.output.shape[-1])
    train = optim.encode_labels(ctx.datasets.train, num_outputs)
    model.compile(**compile_args)
    hist = model.fit(train.repeat() if phase.steps_per_epoch else train,
                     validation_data=optim.encode_labels(ctx.datasets.val, num_outputs), **fit_args)
    best = checkpoint.best_path(ctx.out, index)
    if fs.exists(best):
        checkpoint.load_weights(model, best)
    return hist


def _fit_head_on_features(model, index: int, phase: recipe_lib.Phase, ctx: Context, compile_args: dict, fit_args: dict):
    """The head alone, trained on backbone features computed once; (history, extraction seconds)."""
    from keras_tl import model as model_lib

    fe, head = model_lib.feature_extractor(model), model_lib.head_model(model)
    t_extract = time.time()
    feats = _cached_features(fe, ctx.datasets, ctx.recipe, int(model.output.shape[-1]), seed=ctx.recipe.seed + index)
    extract_s = round(time.time() - t_extract, 2)
    ctx.log(f"keras_tl: features {'read from' if feats['store'] == 'hit' else 'computed'} in {extract_s} s"
            + (f" (feature store {feats['store']}: {ctx.recipe.train.feature_store})" if feats["store"] != "off" else ""))
    head.compile(**compile_args)
    hist = head.fit(feats["train"].repeat() if phase.steps_per_epoch else feats["train"],
                    validation_data=feats["val"], **fit_args)
    best = checkpoint.best_path(ctx.out, index)
    if fs.exists(best):
        checkpoint.load_weights(head, best)
    return hist, extract_s


def fast_path_reason(recipe, rows, runtime) -> Optional[str]:
    """None when a phase may train the head on cached backbone features, else why not."""
    from keras_tl.data import augment

    if recipe.train.feature_cache == "off":
        return "train.feature_cache: off"
    if not all(r["trainable_params"] == 0 for r in rows if r["stage"] != "head"):
        return "the phase trains backbone stages"
    if augment.is_active(recipe.data.augment):
        return "training augmentation is on (features would differ per epoch)"
    if runtime.num_replicas > 1:
        return "more than one replica"
    return None


def _cached_features(fe, datasets, recipe, num_outputs: int, seed: int):
    """Backbone features of the (unaugmented) train and val sets, computed once.

    Reads the run's own datasets (re-building them would generate or decode every image again)
    through one compiled inference-mode function: graph mode runs the frozen backbone 2-3x faster
    than calling the model eagerly batch by batch (tools/bench.py, section cache). The train
    features come from ``train_in_order`` and are then shuffled with ``seed`` alone, so two runs
    with the same seed train the head on the same sequence of batches whatever tf.data's
    parallel map did and however often the shuffled train set was read before.
    """
    import numpy as np
    import tensorflow as tf

    from keras_tl import model as model_lib

    forward = model_lib.inference_function(fe)

    def encode(y):
        if num_outputs == 1:
            return y.reshape(-1, 1).astype(np.float32)
        return np.eye(num_outputs, dtype=np.float32)[y.astype(int)]

    from keras_tl import feature_store

    bs = recipe.data.batch_size
    (xtr, ytr, xva, yva), status = feature_store.features(fe, forward, datasets.train_in_order, datasets.val,
                                                          recipe.train.feature_store)
    train = tf.data.Dataset.from_tensor_slices((xtr, encode(ytr))).shuffle(len(xtr), seed=seed, reshuffle_each_iteration=True).batch(bs)
    val = tf.data.Dataset.from_tensor_slices((xva, encode(yva))).batch(bs)
    return {"train": train.prefetch(2), "val": val.prefetch(2), "store": status}


# ---------------------------------------------------------------- export, records


def export_model(model, ctx: Context) -> Optional[dict]:
    """The run's export (reused when an earlier attempt finished it before being killed)."""
    import numpy as np

    from keras_tl import export

    recipe, out = ctx.recipe, ctx.out
    export_dir = os.path.join(out, "export")
    info = None
    if recipe.export.savedmodel or recipe.export.keras:
        if not fs.is_remote(out):  # temp dirs of an export killed before its rename
            for stale in os.listdir(out):
                if stale.startswith(".export.tmp-"):
                    shutil.rmtree(os.path.join(out, stale), ignore_errors=True)
        if export.is_complete(export_dir):  # exports are atomic: complete, from an attempt killed before DONE
            info = {**export.read_export(export_dir), "dir": export_dir, "reused": True}
        else:
            info = export.export_run(model, export_dir, class_names=list(ctx.datasets.class_names), recipe=recipe,
                                     sample_images=ctx.datasets.serving_samples(8), top_k=recipe.train.top_k,
                                     input_transform=ctx.datasets.input_transform)
    faults.point("exported")
    return info


def write_records(ctx: Context, state: checkpoint.RunState, results: dict, final_split: str,
                  export_info: Optional[dict], timings: Optional[dict] = None) -> dict:
    """metrics.json and run.json, then DONE; returns the metrics."""
    recipe, runtime, datasets = ctx.recipe, ctx.runtime, ctx.datasets
    images_seen = sum(p["images_seen"] for p in state.phases)
    metrics = {
        "recipe": recipe.name,
        "seed": recipe.seed,
        "val": results["val"],
        "test": results.get("test"),
        "final_split": final_split,
        "history": state.history(),
        "images_seen": images_seen,
        "wall_time": round(sum(p["wall_time_s"] for p in state.phases), 2),
    }
    fs.write_json(os.path.join(ctx.out, "metrics.json"), metrics)
    run_info = {
        "recipe": recipe.name,
        "workdir": ctx.out,
        "host": socket.gethostname(),
        "versions": fs.versions(),
        "device": {"kind": runtime.device, "replicas": runtime.num_replicas, "precision": runtime.policy,
                   "jit_compile": runtime.jit_compile, "strategy": type(runtime.strategy).__name__},
        "seed": recipe.seed,
        "weights": dataclasses.asdict(ctx.weights),
        "data": {**datasets.info, "counts": datasets.counts, "class_counts": datasets.class_counts,
                 "class_names": list(datasets.class_names)},
        "phases": [{k: v for k, v in p.items() if k != "history"} for p in state.phases],
        "images_seen": images_seen,
        "wall_time_s": {"training": metrics["wall_time"], **(timings or {}),
                        "this_process": round(time.time() - ctx.t_start, 2)},
        "export": export_info,
    }
    fs.write_json(os.path.join(ctx.out, "run.json"), run_info)
    checkpoint.mark_done(ctx.out)
    return metrics


# ---------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = cli.recipe_parser("keras_tl.train", __doc__, recipe="recipe YAML file (required)",
                          overrides="override a recipe key, e.g. --set model.weights=none (repeatable)",
                          workdir="run directory (default runs/<recipe name>/<timestamp>); "
                          "give an unfinished run's directory to resume it")
    p.add_argument("--resume", action="store_true",
                   help="resume the newest unfinished run of this recipe (same --set values) under "
                   "runs/<recipe name>/, passing over runs another process is training (run directories are "
                   "locked while training); exit status 2 if there is none")
    p.add_argument("--tpu", help="TPU name (overrides train.tpu.name); 'local' on a TPU VM")
    p.add_argument("--tpu_zone", help="TPU zone (overrides train.tpu.zone)")
    p.add_argument("--tpu_project", help="GCP project (overrides train.tpu.project)")
    return p


def main(argv: Optional[list] = None) -> int:
    cli.setup_output()
    return cli.run(_main, parser().parse_args(argv))


def _main(args) -> None:
    if not args.recipe:
        raise UserError("--recipe is required, e.g. python -m keras_tl.train --recipe recipes/smoke.yaml")
    tpu_flags = {k: v for k, v in (("name", args.tpu), ("zone", args.tpu_zone), ("project", args.tpu_project)) if v}
    if args.resume and args.workdir:
        raise UserError("--resume and --workdir: give one (--workdir DIR resumes the run in DIR; --resume finds "
                        "the newest unfinished run of the recipe under runs/<recipe name>/)")
    recipe = recipe_lib.load(args.recipe, args.overrides)
    workdir = checkpoint.latest_unfinished(recipe) if args.resume else args.workdir or checkpoint.default_workdir(recipe)
    same = ["--recipe", args.recipe, *[a for o in args.overrides for a in ("--set", o)]]
    tpu = [a for k, v in (("--tpu", args.tpu), ("--tpu_zone", args.tpu_zone), ("--tpu_project", args.tpu_project)) if v
           for a in (k, v)]

    def resume_command() -> str:
        # --resume is the shorter equivalent while this run lives under the default root and is
        # still the newest unfinished run of its recipe there (checked at Ctrl-C time).
        if not args.workdir:
            try:
                if checkpoint.latest_unfinished(recipe) == workdir:
                    return cli.command_line("keras_tl.train", [*same, "--resume", *tpu])
            except (UserError, OSError):
                pass
        return cli.command_line("keras_tl.train", [*same, "--workdir", workdir, *tpu])

    cli.set_resume_command(resume_command)
    run(recipe, workdir, tpu_flags=tpu_flags or None)


if __name__ == "__main__":
    sys.exit(main())
