"""The run directory: refuse or resume it, the phase records, weights checkpoints, per-epoch logs.

Layout of a run directory (written by :mod:`keras_tl.train`)::

    recipe.yaml                  the resolved recipe; a rerun with another recipe is refused
    state.json                   finished phases (history, per-stage table, weights file, timings)
    checkpoints/best_<i>.weights.h5 (+ .json)   phase i's best epoch by train.monitor, weights only
    checkpoints/phase<i>.weights.h5             the weights phase i ended with, weights only
    backup/phase<i>/             BackupAndRestore (weights + optimizer state) for mid-phase resume
    log_<i>_<name>.csv           per-epoch history of phase i
    DONE                         written last; a finished run is never overwritten
    .lock                        held (fcntl) by the process training here; gone once the run is done
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import os
import shutil
import socket
import time
from typing import Dict, List, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows; the lock is then skipped
    fcntl = None

from keras_tl import faults, fs
from keras_tl import recipe as recipe_lib
from keras_tl.errors import UserError, WorkdirError

MIN_FREE_BYTES = 200 * 2**20
DONE = "DONE"
STATE = "state.json"
LOCK = ".lock"
_HELD = set()  # run directories whose lock this process holds


# ------------------------------------------------------------------- the directory


def default_workdir(recipe: recipe_lib.Recipe) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", recipe.name, stamp)


def latest_unfinished(recipe: recipe_lib.Recipe) -> str:
    """The newest unfinished run of ``recipe`` under its default root ``runs/<name>/`` (what
    ``train --resume`` resumes): a run directory without ``DONE`` whose stored recipe is ``recipe``
    (:func:`keras_tl.recipe.same_recipe`, so ``--set`` values count), newest by start (the
    modification time of its ``recipe.yaml``, written once when the run starts).

    A :class:`WorkdirError` when there is none, saying what the root holds instead.
    """
    root = os.path.dirname(default_workdir(recipe))
    finished = other = busy = 0
    found = []
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    for name in names:
        path = os.path.join(root, name)
        recipe_path = os.path.join(path, "recipe.yaml")
        if not os.path.isfile(recipe_path):
            continue
        if os.path.exists(os.path.join(path, DONE)):
            finished += 1
            continue
        stored = fs.read_text(recipe_path)
        if stored != recipe_lib.dump(recipe) and not recipe_lib.same_recipe(stored, recipe):
            other += 1
            continue
        if holder(path) is not None:
            busy += 1
            continue
        found.append((os.path.getmtime(recipe_path), name, path))
    if found:
        return max(found)[2]
    held = [f"{finished} finished" if finished else "", f"{other} unfinished of a different recipe or --set values" if other else "",
            f"{busy} training now in another process" if busy else ""]
    held = [h for h in held if h]
    held = ", ".join(held[:-1]) + " and " + held[-1] if len(held) > 1 else "".join(held)
    raise WorkdirError(f"--resume: no unfinished run of this recipe under {root}"
                       + (f" ({held})" if held else " (relative to the current directory)")
                       + "; start a new run by leaving out --resume, or resume a run by its --workdir")


class RunLock:
    """An exclusive fcntl lock on ``<workdir>/.lock`` for as long as a process trains there, so two
    processes never train in one run directory (``train --resume`` run twice, or a study's stale
    claim taken over while its run still lives). Local file systems only: gs:// and other remote
    run directories are not locked. The holder's pid, host and start time are written in the file
    for the error message."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self._file = None

    def acquire(self) -> "RunLock":
        if fcntl is None or fs.is_remote(self.workdir):
            return self
        path = os.path.join(self.workdir, LOCK)
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            who = f.read().strip() or "another process"
            f.close()
            raise WorkdirError(busy_message(self.workdir, who)) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        self._file = f
        _HELD.add(os.path.abspath(self.workdir))
        return self

    def release(self, remove: bool = False) -> None:
        """Unlock; ``remove`` deletes the lock file too (once the run is DONE, when no one can
        start training here again)."""
        if self._file is None:
            return
        if remove:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.workdir, LOCK))
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None
        _HELD.discard(os.path.abspath(self.workdir))


def busy_message(workdir: str, who: str) -> str:
    return (f"{workdir}: a run is already training in this directory ({who}); wait for it to finish or stop it, "
            "or give another --workdir")


def holder(workdir: str) -> Optional[str]:
    """Who holds ``workdir``'s run lock (their pid, host and start), or None when no process trains there."""
    path = os.path.join(workdir, LOCK)
    if fcntl is None or fs.is_remote(workdir) or not os.path.exists(path) or os.path.abspath(workdir) in _HELD:
        return None
    try:
        with open(path, "r") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return f.read().strip() or "another process"
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


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
        stored = fs.read_text(recipe_path)
        # Compared without the values at their defaults: a field added since the run started
        # (at its default) is no reason to refuse the run's own directory.
        if stored != recipe_text and not recipe_lib.same_recipe(stored, recipe):
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


@contextlib.contextmanager
def removed_on_user_error(workdir: str, created: bool):
    """Inside the block, a UserError removes ``workdir`` if this run created it and no phase
    finished yet: the corrected recipe is then not refused as "a different recipe"."""
    try:
        yield
    except UserError:
        if created and not fs.exists(os.path.join(workdir, STATE)) and not fs.is_remote(workdir):
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def mark_done(workdir: str) -> None:
    faults.point("before_done")
    fs.write_text(os.path.join(workdir, DONE), datetime.datetime.now().isoformat() + "\n")


def prune_after_done(workdir: str, recipe: recipe_lib.Recipe) -> List[str]:
    """Delete what only resuming needs (``checkpoints/``, ``backup/``) from a finished run; the paths removed.

    Kept: the export (predict, visualize, probe --compare), recipe.yaml, run.json, metrics.json,
    state.json, the logs and confusion matrices (reports). Kept as well when
    ``train.keep_checkpoints`` is true, or when nothing was exported (the checkpoints are then the
    only weights of the run).
    """
    if recipe.train.keep_checkpoints or not (recipe.export.keras or recipe.export.savedmodel):
        return []
    removed = []
    for name in ("checkpoints", "backup"):
        path = os.path.join(workdir, name)
        if fs.exists(path):
            if fs.is_remote(path):
                fs.gfile().rmtree(path)
            else:
                shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def disk_usage(path: str) -> int:
    """Bytes under a local directory (0 for gs://)."""
    if fs.is_remote(path):
        return 0
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


# ------------------------------------------------------------------- phase records


@dataclasses.dataclass
class RunState:
    """``state.json``: one record per finished phase, in order."""

    path: str
    phases: List[dict]

    @classmethod
    def load(cls, workdir: str) -> "RunState":
        path = os.path.join(workdir, STATE)
        phases = json.loads(fs.read_text(path))["phases"] if fs.exists(path) else []
        return cls(path, phases)

    def history(self) -> Dict[str, List[float]]:
        """Per-epoch history of every finished phase, concatenated."""
        out: Dict[str, List[float]] = {}
        for done in self.phases:
            for k, v in done.get("history", {}).items():
                out.setdefault(k, []).extend(v)
        return out

    def record(self, index: int, entry: dict) -> None:
        """Append phase ``index``'s record and write state.json (crash points on either side)."""
        self.phases.append(entry)
        faults.point(f"phase_end:{index}")
        fs.write_json(self.path, {"phases": self.phases})
        faults.point(f"phase_recorded:{index}")


# ------------------------------------------------------------------- weights


def checkpoint_dir(workdir: str) -> str:
    path = os.path.join(workdir, "checkpoints")
    fs.makedirs(path)
    return path


def best_path(workdir: str, index: int) -> str:
    return os.path.join(checkpoint_dir(workdir), f"best_{index}.weights.h5")


def phase_weights_path(workdir: str, index: int) -> str:
    return os.path.join(checkpoint_dir(workdir), f"phase{index}.weights.h5")


def save_weights(model, path: str) -> None:
    """Weights only: the best and phase checkpoints are loaded as weights (the next phase compiles
    a new optimizer); exact mid-phase resume uses BackupAndRestore, which keeps the optimizer state."""
    from keras_tl import model as model_lib

    with model_lib.optimizer_detached(model):
        model.save_weights(path)


def load_weights(model, path: str) -> None:
    from keras_tl import model as model_lib

    # Detached here too: a file without optimizer state would otherwise warn on every load.
    with model_lib.optimizer_detached(model):
        model.load_weights(path)


def best_checkpoint(path: str, monitor: str, phase_index: int, *, resuming: bool):
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
        fs.remove(stale)

    class BestWeights(keras.callbacks.ModelCheckpoint):
        def on_epoch_end(self, epoch, logs=None):
            with model_lib.optimizer_detached(self.model):  # weights only, as save_weights
                super().on_epoch_end(epoch, logs)
            if not fs.exists(partial):
                return
            faults.point(f"checkpoint:{phase_index}")  # the new best is written, not yet in place
            fs.replace(partial, path)
            fs.write_json(record, {"monitor": monitor, "best": None if self.best is None else float(self.best), "epoch": int(epoch)})

    return BestWeights(partial, monitor=monitor, save_best_only=True, save_weights_only=True,
                       initial_value_threshold=best)


# ------------------------------------------------------------------- callbacks and logs


def csv_log_path(workdir: str, index: int, label: str) -> str:
    return os.path.join(workdir, f"log_{index}_{label}.csv")


def resume_callbacks(workdir: str, index: int, label: str, monitor: str) -> list:
    """What makes phase ``index`` resumable: its CSV log, its best checkpoint and its backup
    (in that order: an epoch the backup records is always reflected in the best checkpoint),
    plus the crash points when ``KERAS_TL_FAULT`` is set."""
    import keras

    backup_dir = os.path.join(workdir, "backup", f"phase{index}")
    callbacks = [
        keras.callbacks.CSVLogger(csv_log_path(workdir, index, label), append=True),
        best_checkpoint(best_path(workdir, index), monitor, index, resuming=fs.exists(backup_dir)),
        keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True),
    ]
    if os.environ.get("KERAS_TL_FAULT"):
        callbacks.append(fault_callback(index))
    return callbacks


def fault_callback(phase_index: int):
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


def read_csv_log(path: str) -> Dict[str, List[float]]:
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
