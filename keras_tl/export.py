"""Export a trained model: SavedModel + .keras + labels + backbone weights + export.json, atomically.

Everything is written into a temporary directory beside ``out_dir``, verified by reloading
(the SavedModel's ``serve`` signature and the ``.keras`` file in safe mode must reproduce the
in-memory model's predictions), and only then renamed into place. An export is therefore
complete and verified, or absent. For ``gs://`` destinations (no atomic directory rename)
the verified tree is copied and a ``COMPLETE`` marker is written last; :func:`is_complete`
is the test readers use.

Layout of ``out_dir``::

    savedmodel/           tf.saved_model, signature "serve" (also "serving_default"): pixels float32
                          [None, H, W, C] (raw pixel units or fluxes: the SavedModel applies the
                          training pipeline's input transform, data.nan + data.scale, then the
                          model preprocesses) -> {"output_0": probabilities float32 [None, K]}
    model.keras           the Keras model (custom keras_tl layers reload in safe mode); it takes
                          pixels *after* the input transform, as the training pipeline fed it
    labels.txt            one class name per line, in output order
    backbone.weights.h5   the nested "backbone" sub-model's weights, for later transfer
    export.json           shapes, class names, resize mode, input transform, versions, sha256 of every file, verification
    COMPLETE              written last
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import secrets
import shutil
import tempfile
from typing import Any, Dict, Sequence

import numpy as np

from keras_tl import faults, fs
from keras_tl.errors import DataError, UserError, WorkdirError

MARKER = "COMPLETE"
EXPORT_JSON = "export.json"
SIGNATURE = "serve"
FORMAT_VERSION = 1
# Max |reloaded - in-memory| per probability. Reduced precision differs between the eager/
# graph paths of the in-memory model and the traced SavedModel by a few ulps of the
# compute dtype (float16 ~1e-3, bfloat16 ~8e-3), so those tolerances are looser.
ATOL = {"float32": 1e-4, "mixed_float16": 1e-2, "mixed_bfloat16": 3e-2}


class ExportError(UserError):
    """The export could not be written or did not verify; nothing was left at the destination."""


def is_complete(out_dir: str) -> bool:
    """True if ``out_dir`` holds a finished export (its ``COMPLETE`` marker exists)."""
    marker = out_dir.rstrip("/") + "/" + MARKER
    return fs.exists(marker) if fs.is_remote(out_dir) else os.path.isfile(marker)


def _file_table(root: str) -> Dict[str, dict]:
    table = {}
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            table[rel] = {"bytes": os.path.getsize(full), "sha256": fs.sha256_file(full)}
    return dict(sorted(table.items()))


def _check_destination(out_dir: str) -> None:
    if fs.exists(out_dir) or os.path.islink(out_dir):  # a dangling link is in the way too
        state = "a complete export" if is_complete(out_dir) else "an incomplete export or another directory (no COMPLETE marker)"
        raise WorkdirError(f"{out_dir}: export destination already exists ({state}); remove it or export to another directory")


def _shape_hw_c(model, recipe):
    shape = tuple(model.input_shape)
    if len(shape) != 4:
        raise ValueError(f"export: expected a model taking images [batch, H, W, C], got input shape {shape}")
    want = (*recipe.data.image_size, recipe.data.channels)
    got = shape[1:]
    if any(g is not None and g != w for g, w in zip(got, want)):
        raise ValueError(f"export: model input shape {list(got)} does not match the recipe (data.image_size + data.channels = {list(want)})")
    return want


def _check_labels(class_names: Sequence[str], num_outputs: int) -> list:
    names = [str(c) for c in class_names]
    for c in names:
        if not c or "\n" in c or "\r" in c or c != c.strip():
            raise DataError(f"class name {c!r} cannot be written to labels.txt (empty, a line break, or surrounding spaces); rename that class")
    if len(set(names)) != len(names):
        raise DataError(f"class names are not unique: {names}; each class needs a distinct name")
    if len(names) != num_outputs:
        raise ValueError(f"export: {len(names)} class names for a model with {num_outputs} outputs")
    return names


def _policy_name(model) -> str:
    policy = getattr(model, "dtype_policy", None)
    return getattr(policy, "name", None) or "float32"


def save_serving(model, path: str, hwc, input_transform=None) -> None:
    """SavedModel with signatures "serve" and "serving_default": pixels float32 [None, H, W, C]
    -> {"output_0": probabilities float32}; ``tf.saved_model.load(path).serve(x)`` returns the
    probabilities tensor, as with ``model.export``.

    ``input_transform`` (keras_tl.data.scale: NaN policy + flux scaling, None for none) is traced
    into the signature with the training pipeline's own function, so the SavedModel takes what
    the data files hold (raw fluxes) and transforms them exactly as training did.

    Not ``model.export``: on the TensorFlow backend it stores every weight twice (once per
    keras.Variable wrapper, once per captured tf.Variable; keras-team/keras#23553), doubling
    the file and the serving process's memory. Tracking the raw tf.Variables that the traced
    function captures lets TensorFlow's checkpoint de-duplicate them.
    """
    import tensorflow as tf

    from keras_tl.data import scale as scale_lib

    transform = scale_lib.check(input_transform)
    module = tf.Module()
    module.variables_ = [v.value if hasattr(v, "value") else v for v in model.variables]
    spec = tf.TensorSpec([None, *hwc], tf.float32, name="pixels")
    # Returns the tensor (as model.export's endpoint does); the signatures name it "output_0".
    module.serve = tf.function(lambda pixels: model(scale_lib.apply(pixels, transform), training=False), input_signature=[spec])
    fn = module.serve.get_concrete_function()
    tf.saved_model.save(module, path, signatures={SIGNATURE: fn, "serving_default": fn})


def save_keras_for_inference(model, path: str) -> None:
    """``model.save`` without the optimizer's state.

    Keras 3's ``.keras`` format has no ``include_optimizer``: a compiled model stores its optimizer
    variables too (Adam: two per weight, so a ResNet-50 export was 290 MB instead of 95 MB). An export
    is for inference and for the next transfer; resuming training uses the run's checkpoints. The
    optimizer is detached for the save only and put back whatever happens.
    """
    from keras_tl import model as model_lib

    with model_lib.optimizer_detached(model):
        model.save(path)


def _write(model, tmp: str, names: list, recipe, hwc, transform) -> None:
    cfg = recipe.export
    if cfg.savedmodel:
        save_serving(model, os.path.join(tmp, "savedmodel"), hwc, transform)
    if cfg.keras:
        save_keras_for_inference(model, os.path.join(tmp, "model.keras"))
    if cfg.backbone_weights:
        try:
            backbone = model.get_layer("backbone")
        except ValueError:
            raise UserError("export.backbone_weights: the model has no nested layer named 'backbone'; set export.backbone_weights: false or build the model with keras_tl.model") from None
        if "preprocess" in [l.name for l in model.layers]:
            from keras_tl import weights as weights_lib

            # Also records the registry name and input shape: a transfer into another
            # architecture is then refused by name instead of failing on some layer's shape.
            weights_lib.save_backbone_weights(model, os.path.join(tmp, "backbone.weights.h5"))
        else:
            backbone.save_weights(os.path.join(tmp, "backbone.weights.h5"))
    with open(os.path.join(tmp, "labels.txt"), "w", encoding="utf-8") as f:
        f.write("".join(n + "\n" for n in names))


def _max_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not np.all(np.isfinite(a)) or not np.all(np.isfinite(b)):
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _verify(model, tmp: str, samples: np.ndarray, recipe, atol: float, transform) -> dict:
    """The SavedModel gets the raw ``samples``; the in-memory model and model.keras get them
    through the input transform (as training fed them)."""
    import keras
    import tensorflow as tf

    from keras_tl.data import scale as scale_lib

    raw = samples
    samples = scale_lib.apply(raw, transform).numpy()
    expected = np.asarray(model.predict(samples, batch_size=len(samples), verbose=0))
    if not np.all(np.isfinite(expected)):
        raise ExportError("export: the model predicts NaN/inf on the sample images; the trained weights are broken (check the learning rate and train.precision)")
    report: Dict[str, Any] = {"samples": int(len(samples)), "atol": atol}
    if recipe.export.savedmodel:
        loaded = tf.saved_model.load(os.path.join(tmp, "savedmodel"))
        if SIGNATURE not in loaded.signatures:
            raise ExportError(f"export: the SavedModel has no {SIGNATURE!r} signature (found {sorted(loaded.signatures)})")
        outputs = loaded.signatures[SIGNATURE](pixels=tf.constant(raw))
        got = next(iter(outputs.values())).numpy()
        report["savedmodel_max_abs_diff"] = d = _max_diff(got, expected)
        if not d <= atol:
            raise ExportError(f"export: the reloaded SavedModel disagrees with the in-memory model (max |diff| {d:.3g} > {atol:g}); not exported. Set export.verify: false only to inspect it, and report a bug")
    if recipe.export.keras:
        from keras_tl import layers

        reloaded = layers.load_keras_model(os.path.join(tmp, "model.keras"))
        got = np.asarray(reloaded.predict(samples, batch_size=len(samples), verbose=0))
        report["keras_max_abs_diff"] = d = _max_diff(got, expected)
        if not d <= atol:
            raise ExportError(f"export: model.keras reloaded in safe mode disagrees with the in-memory model (max |diff| {d:.3g} > {atol:g}); not exported")
    return report


def _publish_remote(tmp: str, out_dir: str) -> None:
    """Copy the verified local tree to ``out_dir`` (gs://...), then the marker, last."""
    import tensorflow as tf

    try:
        for dirpath, _, files in os.walk(tmp):
            rel = os.path.relpath(dirpath, tmp)
            dest = out_dir.rstrip("/") if rel == "." else out_dir.rstrip("/") + "/" + rel.replace(os.sep, "/")
            tf.io.gfile.makedirs(dest)
            for name in files:
                if rel == "." and name == MARKER:
                    continue
                tf.io.gfile.copy(os.path.join(dirpath, name), dest + "/" + name, overwrite=False)
        tf.io.gfile.copy(os.path.join(tmp, MARKER), out_dir.rstrip("/") + "/" + MARKER, overwrite=False)
    except Exception:
        try:
            tf.io.gfile.rmtree(out_dir)
        except Exception:  # the copy already failed; without the marker the leftover is not an export
            pass
        raise


def _temp_dir(out_dir: str) -> str:
    """A fresh directory to write the export in: beside ``out_dir`` (renamed into place at the end),
    or a local temp dir for a gs:// destination."""
    if fs.is_remote(out_dir):
        return tempfile.mkdtemp(prefix="keras_tl_export-")
    parent = os.path.dirname(out_dir)
    # Temp dirs of an earlier attempt killed mid-export (never an export: no rename happened).
    for stale in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(os.path.basename(out_dir))}.tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.makedirs(parent, exist_ok=True)
        # os.mkdir, not mkdtemp: the published directory keeps the umask's permissions, not 0700.
        tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{secrets.token_hex(6)}")
        os.mkdir(tmp)
    except OSError as e:
        raise WorkdirError(f"{parent}: cannot create the export's temporary directory here ({e.strerror or e}); choose a writable --workdir") from None
    return tmp


def export_run(model, out_dir: str, *, class_names: Sequence[str], recipe, sample_images, top_k: int = 5,
               input_transform=None) -> dict:
    """Write, verify and atomically publish the export of ``model`` to ``out_dir``.

    ``input_transform``: what the training pipeline applied to decoded images before the model
    (``Datasets.input_transform``; None: nothing). The SavedModel applies it to its input.
    ``sample_images`` are raw float32 images [N, H, W, C] *before* that transform (as a
    SavedModel client sends them; ``Datasets.serving_samples()``), used to check that the
    reloaded SavedModel and .keras file reproduce the in-memory predictions (skipped when
    ``recipe.export.verify`` is false). Returns export.json's content plus ``dir``.
    Raises WorkdirError if ``out_dir`` exists, ExportError if verification fails; on any
    failure nothing is left at ``out_dir`` or beside it.
    """
    from keras_tl.data import scale as scale_lib

    out_dir = out_dir.rstrip("/") if fs.is_remote(out_dir) else os.path.abspath(out_dir)
    _check_destination(out_dir)
    transform = scale_lib.check(input_transform)
    hwc = _shape_hw_c(model, recipe)
    num_outputs = int(model.output_shape[-1])
    names = _check_labels(class_names, num_outputs)
    if not 1 <= int(top_k):
        raise ValueError(f"export: top_k must be >= 1, got {top_k}")
    samples = None
    if recipe.export.verify:
        samples = np.asarray(sample_images, dtype=np.float32) if sample_images is not None else np.zeros((0,))
        if samples.ndim != 4 or samples.shape[0] == 0 or tuple(samples.shape[1:]) != tuple(hwc):
            raise ValueError(f"export: sample_images must be a non-empty float array [N, {', '.join(map(str, hwc))}], got shape {samples.shape}")
    policy = _policy_name(model)
    atol = ATOL.get(policy, ATOL["mixed_bfloat16"])

    tmp = _temp_dir(out_dir)
    try:
        _write(model, tmp, names, recipe, hwc, transform)
        verification = _verify(model, tmp, samples, recipe, atol, transform) if recipe.export.verify else None
        info = {
            "format_version": FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "recipe": recipe.name,
            "backbone": recipe.model.backbone,
            "signature": SIGNATURE if recipe.export.savedmodel else None,
            "input": {"name": "pixels", "shape": [None, *hwc], "dtype": "float32",
                      "image_size": list(hwc[:2]), "channels": hwc[2], "resize": recipe.data.resize,
                      "transform": transform, "fits_hdu": recipe.data.fits.hdu,
                      "units": "raw pixels as the data files hold them (0..255 for 8-bit images, fluxes for float data); "
                               "the SavedModel applies 'transform' (data.nan, data.scale), then the model's own preprocessing; "
                               "model.keras takes pixels after 'transform'"},
            "output": {"shape": [None, num_outputs], "dtype": "float32", "type": recipe.model.output,
                       "activation": "softmax" if recipe.model.output == "multiclass" else "sigmoid"},
            "class_names": names,
            "top_k": min(int(top_k), num_outputs),
            "policy": policy,
            "versions": fs.versions(),
            "verification": verification,
            "files": _file_table(tmp),
        }
        with open(os.path.join(tmp, EXPORT_JSON), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
            f.write(fs.sha256_file(os.path.join(tmp, EXPORT_JSON)) + "\n")
        if fs.is_remote(out_dir):
            _check_destination(out_dir)
            _publish_remote(tmp, out_dir)
        else:
            faults.point("export:before_rename")
            _check_destination(out_dir)  # someone may have created it while we wrote
            os.replace(tmp, out_dir)
            tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return dict(info, dir=out_dir)


def read_export(out_dir: str) -> dict:
    """export.json of a complete export; UserError naming the directory if it is not one."""
    path = out_dir.rstrip("/") + "/" + EXPORT_JSON
    if not is_complete(out_dir):
        raise UserError(f"{out_dir}: not a complete keras_tl export (no {MARKER} marker); pass the export/ directory of a finished run")
    text = fs.read_text(path)
    try:
        info = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}); the export is damaged, export again") from None
    if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: unsupported export format {info.get('format_version') if isinstance(info, dict) else None!r} (this keras_tl reads {FORMAT_VERSION})")
    return info
