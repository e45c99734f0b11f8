"""Classify images with an exported model: ``python -m keras_tl.predict --model EXPORT_DIR IMAGE...``.

``--model`` takes a finished run directory or its ``export/``. Loads ``savedmodel/`` and ``labels.txt`` of a complete export (see keras_tl.export), reads each
image (PNG/JPEG/.npy/FITS), fills NaN pixels and resizes it the way training did (export.json
records size, channels, resize mode and the input transform; the SavedModel itself applies the
flux scaling) and prints one line per image: ``path<TAB>label prob<TAB>label prob ...``,
top-k by probability. An unreadable image prints ``error: ...`` on stderr and the exit status
is 2 (the other images are still classified).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np

from keras_tl import cli
from keras_tl.errors import DataError, UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".npy", ".fits", ".fits.gz", ".fz")


class Predictor:
    """A loaded export: ``predict(images [N, H, W, C] float32) -> probabilities [N, K]``."""

    def __init__(self, export_dir: str):
        import tensorflow as tf

        from keras_tl import export

        self.info = export.read_export(export_dir)
        if not self.info.get("signature"):
            raise UserError(f"{export_dir}: this export has no SavedModel (export.savedmodel was false); export again with export.savedmodel: true")
        labels_path = export_dir.rstrip("/") + "/labels.txt"
        with tf.io.gfile.GFile(labels_path, "r") as f:
            self.labels = [line.rstrip("\n") for line in f if line.strip()]
        if self.labels != list(self.info["class_names"]):
            raise UserError(f"{labels_path}: does not match export.json's class_names; the export is damaged, export again")
        inp = self.info["input"]
        self.image_size = (int(inp["image_size"][0]), int(inp["image_size"][1]))
        self.channels = int(inp["channels"])
        self.resize_mode = inp.get("resize", "resize")
        from keras_tl.data import scale as scale_lib

        try:
            self.transform = scale_lib.check(inp.get("transform"))  # exports before scaling existed: none
        except ValueError as e:
            raise UserError(f"{export_dir}/export.json: {e}; the export is damaged, export again") from None
        self.fits_hdu = inp.get("fits_hdu")
        try:
            loaded = tf.saved_model.load(export_dir.rstrip("/") + "/savedmodel")
        except (OSError, tf.errors.OpError, ValueError) as e:
            raise UserError(f"{export_dir}/savedmodel: cannot load the SavedModel ({type(e).__name__}); the export is damaged, export again") from None
        self._loaded = loaded  # keeps the signature's variables alive
        self._fn = loaded.signatures[self.info["signature"]]

    def predict(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        out = self._fn(pixels=tf.constant(np.asarray(images, np.float32)))
        return next(iter(out.values())).numpy()

    def top_k(self, probs: np.ndarray, k: int) -> List[List[Tuple[str, float]]]:
        k = min(k, len(self.labels))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.labels[j], float(p[j])) for j in row] for p, row in zip(probs, order)]


def clean_tf_message(message: str) -> str:
    """A TensorFlow op error without its graph-internal parts (``{{function_node ...}}``, ``[Op:...]``)."""
    message = re.sub(r"\{\{function_node [^}]*\}\}", "", str(message))
    return re.sub(r"\s*\[Op:\w+\](\s*name:\s*\S*)?", "", message).strip()


def export_dir_of(model: str) -> str:
    """The export directory behind ``--model``: a run directory's ``export/`` or the directory itself."""
    from keras_tl import export

    inner = model.rstrip("/") + "/export"
    if not export.is_complete(model.rstrip("/")) and export.is_complete(inner):
        return inner
    return model


def resize(image, size: Tuple[int, int], mode: str):
    """Resize exactly as the training pipeline does (keras_tl.data.pipeline.resize: one function,
    so serving cannot drift from training): ``resize`` bilinear, ``pad`` keeps aspect and
    zero-pads, ``center_crop`` takes the central window at the original scale."""
    if mode not in ("resize", "pad", "center_crop"):
        raise UserError(f"export.json: unknown resize mode {mode!r}; valid: resize, pad, center_crop")
    from keras_tl.data import pipeline

    return pipeline.resize(image, size, mode)


def read_image(path: str, size: Tuple[int, int], channels: int, mode: str = "resize", nan: str = "error",
               hdu=None) -> np.ndarray:
    """One image as float32 [H, W, C] in raw pixel units (NaN pixels filled per ``nan``, the
    export's data.nan, before resizing, as in training); DataError naming the file otherwise."""
    import tensorflow as tf

    from keras_tl.data import fits as fits_lib

    ext = ".fits" if fits_lib.is_fits(path) else os.path.splitext(path)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        raise DataError(f"{path}: unsupported file type {ext or '(none)'}; expected {', '.join(IMAGE_EXTENSIONS)}")
    try:
        if ext == ".fits":
            with tf.io.gfile.GFile(path, "rb") as f:
                arr, _, _ = fits_lib.read_fits(f.read(), hdu)
            if arr.shape[2] != channels:
                raise DataError(f"{path}: {arr.shape[2]} bands, the model takes {channels}")
            image = tf.constant(arr.astype(np.float32))
        elif ext == ".npy":
            with tf.io.gfile.GFile(path, "rb") as f:
                arr = np.load(f, allow_pickle=False)
            if arr.ndim == 2:
                arr = arr[:, :, None]
            if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
                raise DataError(f"{path}: array of shape {arr.shape} and dtype {arr.dtype}; expected real numbers shaped (H, W) or (H, W, C)")
            if arr.shape[2] != channels:
                raise DataError(f"{path}: {arr.shape[2]} channels, the model takes {channels}")
            image = tf.constant(arr.astype(np.float32))
        else:
            if channels not in (1, 3, 4):
                raise DataError(f"{path}: the model takes {channels} channels; PNG/JPEG hold 1, 3 or 4, pass a .npy array (H, W, {channels})")
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
            if not data:
                raise DataError(f"{path}: empty file")
            image = tf.cast(tf.io.decode_image(data, channels=channels, expand_animations=False), tf.float32)
    except DataError:
        raise
    except fits_lib.FitsError as e:
        raise DataError(f"{path}: {e}") from None
    except (tf.errors.OpError, ValueError, OSError, EOFError) as e:
        msg = clean_tf_message(e.message) if isinstance(e, tf.errors.OpError) else str(e)
        raise DataError(f"{path}: cannot read image: {' '.join(msg.split())[:200]}") from None
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise DataError(f"{path}: image has no pixels (shape {tuple(image.shape)})")
    raw = image.numpy()
    isnan = np.isnan(raw)
    if np.isinf(raw).any():
        raise DataError(f"{path}: contains {int(np.isinf(raw).sum())} infinite values")
    if isnan.any() and nan == "error":
        raise DataError(f"{path}: has {int(isnan.sum())} NaN pixels and the model was trained with data.nan: error")
    if isnan.any() and nan == "median" and isnan.all(axis=(0, 1)).any():
        raise DataError(f"{path}: band {int(np.argmax(isnan.all(axis=(0, 1))))} is all NaN; data.nan: median has no value to fill it with")
    if mode not in ("resize", "pad", "center_crop"):
        raise UserError(f"export.json: unknown resize mode {mode!r}; valid: resize, pad, center_crop")
    from keras_tl.data import pipeline

    if tuple(image.shape[:2]) != tuple(size):
        # The training pipeline's own function: NaN filled first, then resized.
        image = pipeline.to_input_size(image, size, mode, nan)
    return image.numpy()


def classify(predictor: Predictor, paths: Sequence[str], top_k: int, batch_size: int = 32):
    """Yield ``(path, [(label, prob), ...], None)`` or ``(path, None, error message)`` per path, in order."""
    pending: List[Tuple[str, Optional[np.ndarray], Optional[str]]] = []

    def flush():
        good = [img for _, img, err in pending if err is None]
        tops = iter(predictor.top_k(predictor.predict(np.stack(good)), top_k) if good else ())
        for p, _, err in pending:
            yield (p, None, err) if err is not None else (p, next(tops), None)
        pending.clear()

    for path in paths:
        try:
            pending.append((path, read_image(path, predictor.image_size, predictor.channels, predictor.resize_mode,
                                             predictor.transform["nan"], predictor.fits_hdu), None))
        except DataError as e:
            pending.append((path, None, str(e)))
        if len(pending) >= batch_size:
            yield from flush()
    yield from flush()


def format_line(path: str, top: List[Tuple[str, float]]) -> str:
    return "\t".join([path] + [f"{label} {prob:.4f}" for label, prob in top])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m keras_tl.predict", description=__doc__.split("\n\n")[0],
                                epilog="Quiet by default; KERAS_TL_VERBOSE=1 shows TensorFlow's own log lines.")
    p.add_argument("--model", help="a finished run directory or its export/ directory, local or gs:// (required)")
    p.add_argument("--top_k", type=int, help="how many classes to print per image (default: the export's top_k)")
    p.add_argument("--batch_size", type=int, default=32, help="images per model call (default 32)")
    p.add_argument("images", nargs="*", metavar="IMAGE")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    cli.setup_output()
    return cli.run(_main, parser().parse_intermixed_args(argv))


def _main(args) -> int:
    if not args.model:
        raise UserError("--model is required, e.g. python -m keras_tl.predict --model runs/telescope/<run> image.png")
    if not args.images:
        raise UserError("no images given; usage: python -m keras_tl.predict --model RUN_OR_EXPORT_DIR [--top_k 5] IMAGE...")
    for name in ("top_k", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} {getattr(args, name)}: must be at least 1")
    predictor = Predictor(export_dir_of(args.model))
    k = args.top_k or int(predictor.info.get("top_k", 5))
    failed = 0
    for path, top, err in classify(predictor, args.images, k, args.batch_size):
        if err is not None:
            failed += 1
            cli.print_error(err)
        else:
            print(format_line(path, top), flush=True)
    return cli.USAGE_ERROR if failed else 0


if __name__ == "__main__":
    sys.exit(main())
