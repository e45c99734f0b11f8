"""Train one recipe and export the model.

    python -m keras_tl.train --recipe recipes/telescope.yaml [--set k=v ...] [--workdir DIR]

The entry point only parses, validates and delegates (as in TF Model Garden's
``official/vision/train.py``): the recipe is loaded and validated before
TensorFlow is imported, so a typo costs milliseconds, not a model build.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import shutil
import socket
import sys
import time
from typing import Any, Dict, List, Optional

from absl import app, flags

from keras_tl import faults, fs
from keras_tl import recipe as recipe_lib
from keras_tl.errors import UserError, WorkdirError

FLAGS = flags.FLAGS
flags.DEFINE_string("recipe", None, "Path to a recipe YAML file.")
flags.DEFINE_multi_string("set", [], "Override a recipe key: --set model.weights=none (repeatable).")
flags.DEFINE_string("workdir", None, "Run directory (default runs/<recipe name>/<timestamp>); rerun on an unfinished one to resume.")
flags.DEFINE_string("tpu", None, "TPU name (overrides train.tpu.name); 'local' on a TPU VM.")
flags.DEFINE_string("tpu_zone", None, "TPU zone (overrides train.tpu.zone).")
flags.DEFINE_string("tpu_project", None, "GCP project (overrides train.tpu.project).")

MIN_FREE_BYTES = 200 * 2**20
DONE = "DONE"


# ----------------------------------------------------------------- run directory


def default_workdir(recipe: recipe_lib.Recipe) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", recipe.name, stamp)


def prepare_workdir(workdir: str, recipe: recipe_lib.Recipe) -> bool:
    """Check, then create the run directory. Returns True when resuming an unfinished run.

    Refuses a finished run, a directory holding something else, a different recipe,
    an unwritable directory or one with too little free disk — all before training.
    """
    resuming = check_workdir(workdir, recipe)
    create_workdir(workdir, recipe, resuming)
    return resuming


def check_workdir(workdir: str, recipe: recipe_lib.Recipe) -> bool:
    """The read-only half of :func:`prepare_workdir`: writes nothing. True when resuming."""
    recipe_text = recipe_lib.dump(recipe)
    recipe_path = os.path.join(workdir, "recipe.yaml")
    if fs.exists(os.path.join(workdir, DONE)):
        raise WorkdirError(f"{workdir}: holds a finished run; choose another --workdir or delete this one to retrain")
    resuming = fs.exists(recipe_path)
    if resuming:
        if fs.read_text(recipe_path) != recipe_text:
            raise WorkdirError(
                f"{workdir}: holds an unfinished run of a different recipe; resume it with the same recipe and --set flags, or choose another --workdir"
            )
    elif fs.exists(workdir) and not fs.is_remote(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise WorkdirError(f"{workdir}: exists, is not empty and holds no keras_tl run; choose another --workdir")
    return resuming


def create_workdir(workdir: str, recipe: recipe_lib.Recipe, resuming: bool) -> bool:
    """The writing half of :func:`prepare_workdir`. True when this call created the directory."""
    created = not fs.exists(workdir)
    if fs.is_remote(workdir):
        fs.makedirs(workdir)
    else:
        try:
            os.makedirs(workdir, exist_ok=True)
            probe = os.path.join(workdir, f".write-test-{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise WorkdirError(f"{workdir}: cannot write to the run directory ({e.strerror or e}); choose a writable --workdir") from None
        free = shutil.disk_usage(workdir).free
        if free < MIN_FREE_BYTES:
            raise WorkdirError(f"{workdir}: only {free // 2**20} MiB free, keras_tl needs at least {MIN_FREE_BYTES // 2**20} MiB for checkpoints and the export; free some disk or choose another --workdir")
    if not resuming:
        fs.write_text(os.path.join(workdir, "recipe.yaml"), recipe_lib.dump(recipe))
    return created


# --------------------------------------------------------------- optimizer


def _lr_schedule(phase: recipe_lib.Phase, steps_per_epoch: int):
    total = max(1, phase.epochs * steps_per_epoch)
    warmup = int(round(phase.warmup_epochs * steps_per_epoch))
    boundaries = [e * steps_per_epoch for e in phase.step_epochs]
    if phase.schedule == "constant" and warmup == 0:
        return phase.lr
    return PhaseSchedule(phase.lr, total, warmup, phase.schedule, boundaries, phase.step_factor)


def make_optimizer(phase: recipe_lib.Phase, steps_per_epoch: int):
    """The phase's optimizer with its learning-rate schedule."""
    import keras

    lr = _lr_schedule(phase, steps_per_epoch)
    wd = phase.weight_decay or None
    if phase.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=phase.momentum, weight_decay=wd)
    if phase.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr, weight_decay=wd)
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=phase.weight_decay or 1e-4)


def _schedule_class():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="keras_tl")
    class PhaseSchedule(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up, then constant | cosine | step | linear decay over the phase."""

        def __init__(self, lr, total_steps, warmup_steps=0, kind="constant", boundaries=(), factor=0.1):
            self.lr, self.total_steps, self.warmup_steps = float(lr), int(total_steps), int(warmup_steps)
            self.kind, self.boundaries, self.factor = kind, list(boundaries), float(factor)

        def __call__(self, step):
            step = ops.cast(step, "float32")
            warm = float(max(self.warmup_steps, 1))
            span = float(max(self.total_steps - self.warmup_steps, 1))
            t = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            if self.kind == "cosine":
                lr = 0.5 * self.lr * (1.0 + ops.cos(math.pi * t))
            elif self.kind == "linear":
                lr = self.lr * (1.0 - t)
            elif self.kind == "step":
                n = sum(ops.cast(step >= b, "float32") for b in self.boundaries) if self.boundaries else 0.0
                lr = self.lr * ops.power(self.factor, n)
            else:
                lr = self.lr + 0.0 * step
            if self.warmup_steps > 0:
                lr = ops.where(step < self.warmup_steps, self.lr * (step + 1.0) / warm, lr)
            return lr

        def get_config(self):
            return dict(lr=self.lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                        kind=self.kind, boundaries=self.boundaries, factor=self.factor)

    return PhaseSchedule


def PhaseSchedule(*args, **kwargs):  # noqa: N802 (a class, built lazily so this module imports without TF)
    global PhaseSchedule
    PhaseSchedule = _schedule_class()
    return PhaseSchedule(*args, **kwargs)


# ------------------------------------------------------------------ metrics


def _loss_and_metrics(num_outputs: int, phase: recipe_lib.Phase, top_k: int):
    import keras

    if num_outputs == 1:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=phase.label_smoothing)
        return loss, [keras.metrics.BinaryAccuracy(name="accuracy")]
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=phase.label_smoothing)
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    k = min(top_k, num_outputs - 1)
    if k >= 2:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(k=k, name=f"top{k}"))
    return loss, metrics


def _encode_labels(ds, num_outputs: int):
    import tensorflow as tf

    if ds is None:
        return None
    if num_outputs == 1:
        return ds.map(lambda x, y: (x, tf.cast(tf.reshape(y, [-1, 1]), tf.float32)))
    return ds.map(lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), num_outputs)))


def evaluate(model, ds, class_names, top_k: int) -> Dict[str, Any]:
    """Loss, accuracy, top-k, per-class precision/recall/F1, ROC-AUC and the confusion matrix on ``ds``."""
    import numpy as np
    from sklearn import metrics as skm

    from keras_tl import model as model_lib

    # Compiled once: calling a ResNet eagerly batch by batch is 2-3x slower (tools/bench.py).
    forward = model_lib.inference_function(model)
    probs, labels = [], []
    for x, y in ds:
        probs.append(np.asarray(forward(x), dtype=np.float64))
        labels.append(np.asarray(y).reshape(-1))
    p = np.concatenate(probs) if probs else np.zeros((0, len(class_names)))
    y = np.concatenate(labels).astype(int) if labels else np.zeros((0,), int)
    n_classes = len(class_names)
    if p.shape[1] == 1:  # binary, one sigmoid unit: expand to two columns
        p = np.concatenate([1 - p, p], axis=1)
    eps = 1e-7
    out: Dict[str, Any] = {"examples": int(len(y))}
    if len(y) == 0:
        return out
    out["loss"] = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0))))
    pred = p.argmax(1)
    out["accuracy"] = float(np.mean(pred == y))
    k = min(top_k, n_classes - 1)
    if k >= 2:
        topk = np.argsort(-p, axis=1)[:, :k]
        out[f"top{k}"] = float(np.mean((topk == y[:, None]).any(1)))
    labels_all = list(range(n_classes))
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=labels_all, zero_division=0)
    out["per_class"] = {
        name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(sup[i])}
        for i, name in enumerate(class_names)
    }
    out["macro_f1"] = float(np.mean(f1))
    present = np.unique(y)
    try:
        if n_classes == 2 and len(present) == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y, p[:, 1]))
        elif len(present) == n_classes and n_classes > 2:
            out["roc_auc_ovr_macro"] = float(skm.roc_auc_score(y, p, multi_class="ovr", labels=labels_all))
    except ValueError:
        pass
    out["confusion"] = skm.confusion_matrix(y, pred, labels=labels_all).tolist()
    return out


def plot_confusion(matrix, class_names, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------- records


def _as_dict(obj) -> Optional[dict]:
    import dataclasses

    if obj is None:
        return None
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if hasattr(obj, "_asdict"):
        return dict(obj._asdict())
    return dict(obj) if isinstance(obj, dict) else {"value": str(obj)}


def _fault_callback(phase_index: int):
    """Crash points inside fit: ``batch:<phase>:<epoch>:<batch>`` (mid-epoch) and
    ``epoch_end:<phase>:<epoch>`` (after the epoch's backup, before later callbacks)."""
    import keras

    class FaultPoints(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            faults.point(f"batch:{phase_index}:{self.epoch}:{batch}")

        def on_epoch_end(self, epoch, logs=None):
            faults.point(f"epoch_end:{phase_index}:{epoch}")  # after the epoch's backup is written

    return FaultPoints()


def _save_weights(model, path: str) -> None:
    """Weights only: the best and phase checkpoints are loaded as weights (the next phase compiles
    a new optimizer); exact mid-phase resume uses BackupAndRestore, which keeps the optimizer state."""
    from keras_tl import model as model_lib

    with model_lib.optimizer_detached(model):
        model.save_weights(path)


def _load_weights(model, path: str) -> None:
    from keras_tl import model as model_lib

    # Detached here too: a file without optimizer state would otherwise warn on every load.
    with model_lib.optimizer_detached(model):
        model.load_weights(path)


def _best_checkpoint(path: str, monitor: str, phase_index: int, *, resuming: bool):
    """The phase's save_best_only weights at ``path``, written atomically (temp file, then
    rename), with the best value kept in ``<path>.json`` so that a phase resumed from its
    backup keeps comparing against the best epoch so far. A kill during a write leaves the
    previous best intact; a phase that starts over (no backup) starts a fresh record."""
    import keras

    from keras_tl import model as model_lib

    record, partial = path + ".json", path[: -len(".weights.h5")] + ".partial.weights.h5"
    best = None
    if resuming and fs.exists(record) and fs.exists(path):
        try:
            value = json.loads(fs.read_text(record))["best"]
            best = None if value is None else float(value)
        except (ValueError, KeyError, TypeError):
            best = None
    for stale in ([partial] if resuming else [partial, path, record]):
        if fs.exists(stale):
            fs.remove(stale)

    class BestWeights(keras.callbacks.ModelCheckpoint):
        def on_epoch_end(self, epoch, logs=None):
            with model_lib.optimizer_detached(self.model):  # weights only, as _save_weights
                super().on_epoch_end(epoch, logs)
            if not fs.exists(partial):
                return
            faults.point(f"checkpoint:{phase_index}")  # the new best is written, not yet in place
            fs.replace(partial, path)
            fs.write_json(record, {"monitor": monitor, "best": None if self.best is None else float(self.best), "epoch": int(epoch)})

    return BestWeights(partial, monitor=monitor, save_best_only=True, save_weights_only=True,
                       initial_value_threshold=best)


def _read_csv_log(path: str) -> Dict[str, List[float]]:
    """Per-epoch history of a phase from its CSV log, one row per epoch (a resumed phase
    may have logged an epoch twice: the later row wins)."""
    import csv

    if not fs.exists(path):
        return {}
    rows: Dict[int, dict] = {}
    for row in csv.DictReader(io.StringIO(fs.read_text(path), newline="")):
        try:
            rows[int(row["epoch"])] = row
        except (KeyError, ValueError):
            continue
    out: Dict[str, List[float]] = {}
    for epoch in sorted(rows):
        for k, v in rows[epoch].items():
            if k != "epoch" and v not in (None, ""):
                out.setdefault(k, []).append(float(v))
    return out


def _phase_is_head_only(rows) -> bool:
    return all(r["trainable_params"] == 0 for r in rows if r["stage"] != "head")


def _augmentation_off(recipe) -> bool:
    a = recipe.data.augment
    return not (a.flip or a.rot90 or a.random_resized_crop or a.brightness or a.contrast or a.noise)


def fast_path_reason(recipe, rows, runtime) -> Optional[str]:
    """None when a phase may train the head on cached backbone features, else why not."""
    if recipe.train.feature_cache == "off":
        return "train.feature_cache: off"
    if not _phase_is_head_only(rows):
        return "the phase trains backbone stages"
    if not _augmentation_off(recipe):
        return "training augmentation is on (features would differ per epoch)"
    if runtime.num_replicas > 1:
        return "more than one replica"
    return None


# ---------------------------------------------------------------------- run


def run(recipe: recipe_lib.Recipe, workdir: Optional[str] = None, *, tpu_flags: Optional[dict] = None,
        log=print) -> Dict[str, Any]:
    """Train ``recipe`` in ``workdir`` (resuming an unfinished run there) and export it.

    Returns the final metrics (also written to ``metrics.json``).
    """
    t_start = time.time()
    workdir = workdir or default_workdir(recipe)
    # Pre-flight (workdir, runtime, weights, data) writes nothing: a run that cannot start leaves
    # no directory behind, so the user's corrected recipe is not refused as "a different recipe".
    resuming = check_workdir(workdir, recipe)
    holder = {"created": False}
    try:
        return _run(recipe, workdir, resuming, tpu_flags, log, t_start, holder)
    except UserError:
        if holder["created"] and not fs.exists(os.path.join(workdir, "state.json")) and not fs.is_remote(workdir):
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _run(recipe, workdir, resuming, tpu_flags, log, t_start, holder):
    from keras_tl import distribute

    runtime = distribute.setup(recipe, tpu_flags=tpu_flags)

    import keras
    import numpy as np
    import tensorflow as tf

    from keras_tl import data as data_lib
    from keras_tl import export as export_lib
    from keras_tl import freeze, model as model_lib

    from keras_tl import weights as weights_lib

    # Resolve weights before reading any data: a missing ImageNet file stops the run in seconds.
    weights_info = _as_dict(weights_lib.resolve_weights(recipe))
    keras.utils.set_random_seed(recipe.seed)
    if recipe.train.deterministic:
        tf.config.experimental.enable_op_determinism()

    scan_info = data_lib.scan(recipe)
    datasets = data_lib.build_datasets(recipe, global_batch_size=recipe.data.batch_size,
                                       drop_remainder=runtime.needs_static_shapes)
    if datasets.val is None:
        raise UserError("data.val_fraction: the data has no validation split (val_fraction 0 and no data.val_split); "
                        "keras_tl selects checkpoints on validation data, so set data.val_fraction > 0 (e.g. 0.1) or data.val_split")

    # Pre-flight passed: now the run directory may be written.
    created = create_workdir(workdir, recipe, resuming)
    holder["created"] = created
    log(f"keras_tl: {'resuming the unfinished run in' if resuming else 'run directory'} {workdir}")
    if not runtime.is_chief:
        # Multi-worker: every worker runs the same steps, only the chief's files are kept.
        import tempfile

        workdir = tempfile.mkdtemp(prefix=f"keras_tl-worker{(runtime.task or {}).get('index', 'x')}-")
    if scan_info and scan_info.get("skipped_files"):
        fs.write_json(os.path.join(workdir, "skipped_files.json"), scan_info)
        log(f"keras_tl: skipping {len(scan_info['skipped_files'])} unreadable files (listed in skipped_files.json)")
    class_names = list(datasets.class_names)
    num_classes = len(class_names)

    with runtime.strategy.scope():
        model = model_lib.build_model(recipe, num_classes)
    num_outputs = int(model.output.shape[-1])
    train_ds = _encode_labels(datasets.train, num_outputs)
    val_ds = _encode_labels(datasets.val, num_outputs)

    state_path = os.path.join(workdir, "state.json")
    state = json.loads(fs.read_text(state_path)) if fs.exists(state_path) else {"phases": []}
    ckpt_dir = os.path.join(workdir, "checkpoints")
    fs.makedirs(ckpt_dir)
    if state["phases"]:
        last = state["phases"][-1]
        _load_weights(model, last["weights"])
        log(f"keras_tl: phases 0..{len(state['phases']) - 1} already done; loaded {last['weights']}")

    n_train = datasets.counts["train"]
    batch = recipe.data.batch_size
    history: Dict[str, List[float]] = {}
    for done in state["phases"]:
        for k, v in done.get("history", {}).items():
            history.setdefault(k, []).extend(v)

    for index, phase in enumerate(recipe.train.phases):
        if index < len(state["phases"]):
            continue
        label = phase.name or f"phase{index}"
        rows = freeze.apply_phase(model, phase, recipe)
        log(f"keras_tl: {label}: {phase.epochs} epochs, {phase.optimizer} lr {phase.lr}, trainable:\n{freeze.format_table(rows)}")
        if phase.lr_multipliers:
            raise UserError(
                f"train.phases.{index}.lr_multipliers: per-stage learning rates are not supported with Keras 3 optimizers yet; "
                "use a separate phase with a lower lr for the deeper stages instead")
        if runtime.needs_static_shapes:
            steps_per_epoch = phase.steps_per_epoch or max(1, n_train // batch)
        else:
            steps_per_epoch = phase.steps_per_epoch or max(1, math.ceil(n_train / batch))
        reason = fast_path_reason(recipe, rows, runtime)
        t_phase = time.time()
        best_path = os.path.join(ckpt_dir, f"best_{index}.weights.h5")
        backup_dir = os.path.join(workdir, "backup", f"phase{index}")
        callbacks = [
            keras.callbacks.CSVLogger(os.path.join(workdir, f"log_{index}_{label}.csv"), append=True),
            # Before the backup: an epoch the backup records is always reflected in the best checkpoint.
            _best_checkpoint(best_path, recipe.train.monitor, index, resuming=fs.exists(backup_dir)),
            keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True),
        ]
        if os.environ.get("KERAS_TL_FAULT"):
            callbacks.append(_fault_callback(index))
        if recipe.train.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard", label), write_graph=False))
        if recipe.train.early_stopping:
            callbacks.append(keras.callbacks.EarlyStopping(monitor=recipe.train.monitor, patience=recipe.train.early_stopping,
                                                           mode="auto"))
        with runtime.strategy.scope():
            loss, metrics = _loss_and_metrics(num_outputs, phase, recipe.train.top_k)
            optimizer = make_optimizer(phase, steps_per_epoch)
        fit_kwargs = dict(epochs=phase.epochs, verbose=1 if sys.stdout.isatty() else 2)
        if recipe.data.class_weights and datasets.class_weights:
            fit_kwargs["class_weight"] = {int(k): float(v) for k, v in datasets.class_weights.items()}
        if phase.steps_per_epoch:
            fit_kwargs["steps_per_epoch"] = phase.steps_per_epoch
            train_in = train_ds.repeat()
        else:
            train_in = train_ds
        if reason is None:
            log(f"keras_tl: {label}: frozen backbone, no augmentation: training the head on cached features")
            fe, head = model_lib.feature_extractor(model), model_lib.head_model(model)
            t_extract = time.time()
            feats = _cached_features(fe, datasets, recipe, num_outputs, seed=recipe.seed + index)
            extract_s = round(time.time() - t_extract, 2)
            head.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=runtime.jit_compile,
                         steps_per_execution=recipe.train.steps_per_execution)
            f_train = feats["train"].repeat() if phase.steps_per_epoch else feats["train"]
            hist = head.fit(f_train, validation_data=feats["val"], callbacks=callbacks, **fit_kwargs)
            if fs.exists(best_path):
                _load_weights(head, best_path)
        else:
            extract_s = None
            log(f"keras_tl: {label}: full forward/backward path ({reason})")
            model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=runtime.jit_compile,
                          steps_per_execution=recipe.train.steps_per_execution)
            hist = model.fit(train_in, validation_data=val_ds, callbacks=callbacks, **fit_kwargs)
            if fs.exists(best_path):
                _load_weights(model, best_path)
        phase_weights = os.path.join(ckpt_dir, f"phase{index}.weights.h5")
        _save_weights(model, phase_weights)
        phase_hist = _read_csv_log(callbacks[0].filename) or {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        epochs_run = len(next(iter(phase_hist.values()), []))
        for k, v in phase_hist.items():
            history.setdefault(k, []).extend(v)
        state["phases"].append({
            "name": label, "weights": phase_weights, "history": phase_hist, "stages": rows,
            "trainable_params": int(sum(r["trainable_params"] for r in rows)),
            "epochs_run": epochs_run,
            "images_seen": int(epochs_run * (phase.steps_per_epoch * batch if phase.steps_per_epoch else n_train)),
            "wall_time_s": round(time.time() - t_phase, 2),
            "path": "cached_features" if reason is None else "full",
            "feature_extraction_s": extract_s,
            "fast_path_skipped_because": reason,
        })
        faults.point(f"phase_end:{index}")
        fs.write_json(state_path, state)
        faults.point(f"phase_recorded:{index}")

    results = {"val": evaluate(model, datasets.val, class_names, recipe.train.top_k)}
    if datasets.test is not None:
        results["test"] = evaluate(model, datasets.test, class_names, recipe.train.top_k)
    final_split = "test" if "test" in results else "val"
    for split in results:
        cm = results[split].get("confusion")
        if cm is not None:
            fs.write_json(os.path.join(workdir, f"confusion_{split}.json"), {"class_names": class_names, "matrix": cm})
            plot_confusion(cm, class_names, os.path.join(workdir, f"confusion_{split}.png"),
                           f"{recipe.name}: {split} (accuracy {results[split]['accuracy']:.3f})")

    export_dir = os.path.join(workdir, "export")
    export_info = None
    if recipe.export.savedmodel or recipe.export.keras:
        if not fs.is_remote(workdir):  # temp dirs of an export killed before its rename
            for stale in os.listdir(workdir):
                if stale.startswith(".export.tmp-"):
                    shutil.rmtree(os.path.join(workdir, stale), ignore_errors=True)
        if export_lib.is_complete(export_dir):  # exports are atomic: complete, from an attempt killed before DONE
            export_info = {**export_lib.read_export(export_dir), "dir": export_dir, "reused": True}
        else:
            sample = next(iter(datasets.val.take(1)))[0][:8]
            export_info = export_lib.export_run(model, export_dir, class_names=class_names, recipe=recipe,
                                                sample_images=np.asarray(sample), top_k=recipe.train.top_k)

    faults.point("exported")
    images_seen = sum(p["images_seen"] for p in state["phases"])
    metrics = {
        "recipe": recipe.name,
        "seed": recipe.seed,
        "val": results["val"],
        "test": results.get("test"),
        "final_split": final_split,
        "history": history,
        "images_seen": images_seen,
        "wall_time": round(sum(p["wall_time_s"] for p in state["phases"]), 2),
    }
    fs.write_json(os.path.join(workdir, "metrics.json"), metrics)
    run_info = {
        "recipe": recipe.name,
        "workdir": workdir,
        "host": socket.gethostname(),
        "versions": fs.versions(),
        "device": {"kind": runtime.device, "replicas": runtime.num_replicas, "precision": runtime.policy,
                   "jit_compile": runtime.jit_compile, "strategy": type(runtime.strategy).__name__},
        "seed": recipe.seed,
        "weights": weights_info,
        "data": {**datasets.info, "counts": datasets.counts, "class_counts": datasets.class_counts,
                 "class_names": class_names},
        "phases": [{k: v for k, v in p.items() if k != "history"} for p in state["phases"]],
        "images_seen": images_seen,
        "wall_time_s": {"training": metrics["wall_time"], "this_process": round(time.time() - t_start, 2)},
        "export": export_info,
    }
    fs.write_json(os.path.join(workdir, "run.json"), run_info)
    faults.point("before_done")
    fs.write_text(os.path.join(workdir, DONE), datetime.datetime.now().isoformat() + "\n")
    if not runtime.is_chief:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = results[final_split]
    log(f"keras_tl: done: {final_split} accuracy {summary.get('accuracy', float('nan')):.4f}, loss {summary.get('loss', float('nan')):.4f}; "
        f"{workdir}")
    return metrics


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

    def extract(ds):
        xs, ys = [], []
        for x, y in ds:
            xs.append(np.asarray(forward(x), dtype=np.float32))
            ys.append(np.asarray(y))
        return np.concatenate(xs), np.concatenate(ys)

    def encode(y):
        if num_outputs == 1:
            return y.reshape(-1, 1).astype(np.float32)
        return np.eye(num_outputs, dtype=np.float32)[y.astype(int)]

    bs = recipe.data.batch_size
    xtr, ytr = extract(datasets.train_in_order)
    xva, yva = extract(datasets.val)
    train = tf.data.Dataset.from_tensor_slices((xtr, encode(ytr))).shuffle(len(xtr), seed=seed, reshuffle_each_iteration=True).batch(bs)
    val = tf.data.Dataset.from_tensor_slices((xva, encode(yva))).batch(bs)
    return {"train": train.prefetch(2), "val": val.prefetch(2)}


# ---------------------------------------------------------------------- CLI


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; use --recipe R [--set k=v ...] [--workdir DIR]", file=sys.stderr)
        sys.exit(2)
    if not FLAGS.recipe:
        print("error: --recipe is required, e.g. python -m keras_tl.train --recipe recipes/smoke.yaml", file=sys.stderr)
        sys.exit(2)
    tpu_flags = {k: v for k, v in (("name", FLAGS.tpu), ("zone", FLAGS.tpu_zone), ("project", FLAGS.tpu_project)) if v}
    try:
        recipe = recipe_lib.load(FLAGS.recipe, FLAGS.set)
        run(recipe, FLAGS.workdir, tpu_flags=tpu_flags or None)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
