"""Grad-CAM and the most active feature maps per stage, side by side for one or two models.

    python -m keras_tl.visualize --model A [--model B] [--out DIR] [--maps K] IMAGE...

--model takes a keras_tl.train run directory, its export/ directory, or a .keras file (loaded in
safe mode). IMAGE is a PNG/JPEG/BMP/GIF file or a .npy array (H, W[, C]) in raw pixel units; it
is resized to each model's input size. For each image, one PNG shows, per model (one row each):
the input, the Grad-CAM overlay for the predicted class at the backbone's last stage, and the K
most active feature maps (highest mean activation) at the end of every stage. index.html shows
them all with the predictions; visualize.json holds the predictions as data.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from typing import List, Optional, Sequence

import numpy as np

from keras_tl import cli, fs
from keras_tl.errors import DataError, UserError, WorkdirError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def resolve_model_path(arg: str) -> str:
    """The .keras file behind a run directory, an export directory or a .keras path."""
    for candidate in (os.path.join(arg, "export", "model.keras"), os.path.join(arg, "model.keras"), arg):
        if os.path.isfile(candidate) and candidate.endswith(".keras"):
            return candidate
    if os.path.isdir(arg):
        raise UserError(f"--model {arg}: no export/model.keras or model.keras inside; give a finished run directory, "
                        "its export/ directory or a .keras file")
    raise UserError(f"--model {arg}: not found or not a .keras file; give a run directory, an export directory or a .keras file")


def input_transform_for(model_path: str) -> Optional[dict]:
    """The input transform (data.nan + data.scale) recorded in export.json beside the .keras file, if any."""
    path = os.path.join(os.path.dirname(model_path), "export.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        transform = json.load(f).get("input", {}).get("transform")
    if transform is None:
        return None
    from keras_tl.data import scale as scale_lib

    try:
        return scale_lib.check(transform)
    except ValueError as e:
        raise UserError(f"{path}: {e}; the export is damaged, export again") from None


def class_names_for(model_path: str, num_outputs: int) -> List[str]:
    """labels.txt beside the .keras file (one name per line) or class_<i>."""
    path = os.path.join(os.path.dirname(model_path), "labels.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            names = [line.rstrip("\n") for line in f if line.strip()]
        if names:
            return names
    return [f"class_{i}" for i in range(max(num_outputs, 2))]


def load_image(path: str, size, channels: int) -> np.ndarray:
    """One image as float32 [H, W, C] in raw pixel units at ``size`` (H, W)."""
    h, w = size
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False).astype(np.float32)
            if arr.ndim == 2:
                arr = arr[..., None]
            if arr.ndim != 3:
                raise DataError(f"{path}: expected an (H, W) or (H, W, C) array, got shape {arr.shape}")
            if arr.shape[-1] != channels:
                raise DataError(f"{path}: has {arr.shape[-1]} channels, the model takes {channels}; give a matching array")
            if arr.shape[:2] != (h, w):
                import tensorflow as tf

                arr = tf.image.resize(arr, (h, w), method="bilinear").numpy()
            return arr
        if ext not in IMAGE_EXTS:
            raise DataError(f"{path}: unsupported image type {ext or '(none)'}; use {', '.join(IMAGE_EXTS)} or .npy")
        from PIL import Image

        with Image.open(path) as im:
            if channels == 1:
                im = im.convert("L")
            elif channels == 3:
                im = im.convert("RGB")
            else:
                raise DataError(f"{path}: the model takes {channels} channels; give .npy arrays for multi-band images")
            im = im.resize((w, h), Image.BILINEAR)
            arr = np.asarray(im, np.float32)
        return arr[..., None] if arr.ndim == 2 else arr
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the image ({' '.join(str(e).split())[:160]})") from None


def to_display(img: np.ndarray) -> np.ndarray:
    """An [H, W, C] image as RGB (or gray) floats in [0, 1] for plotting."""
    img = np.asarray(img, np.float32)
    if img.shape[-1] >= 3:
        img = img[..., :3]
    else:
        img = img[..., 0]
    if img.min() >= 0 and img.max() <= 255 and img.max() > 1.5:
        return np.clip(img / 255.0, 0, 1)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def distinct_labels(args: Sequence[str]) -> List[str]:
    """The shortest path suffixes that tell the models apart (two study runs both end in seed0)."""
    parts = [os.path.normpath(a).split(os.sep) for a in args]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [os.path.normpath(a) for a in args]


class ModelView:
    """A loaded model plus what is needed to explain its predictions."""

    def __init__(self, arg: str):
        from keras_tl import model as model_lib
        from keras_tl.diagnostics import gradcam
        from keras_tl.layers import load_keras_model

        self.arg = arg
        self.label = os.path.basename(os.path.normpath(arg))  # run() makes labels distinct
        self.path = resolve_model_path(arg)
        self.model = load_keras_model(self.path)
        shape = tuple(self.model.input.shape[1:])
        self.size, self.channels = shape[:2], shape[2]
        self.class_names = class_names_for(self.path, int(self.model.output.shape[-1]))
        self.split = gradcam.split_at_backbone(self.model)
        self.stage_model = model_lib.stage_model(self.model)
        self.transform = input_transform_for(self.path)

    def explain(self, images: np.ndarray, k: int):
        from keras_tl.diagnostics import gradcam

        heat, classes, probs = gradcam.gradcam(self.model, images, split=self.split)
        stages = {s: gradcam.top_feature_maps(np.asarray(f, np.float32), k)
                  for s, f in self.stage_model(images, training=False).items()}
        return heat, classes, probs, stages


def _mosaic(maps: np.ndarray) -> np.ndarray:
    """k maps [k, H, W] tiled into a near-square grid."""
    k, h, w = maps.shape
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, np.float32)  # NaN gaps render blank
    for i in range(k):
        r, c = divmod(i, cols)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = maps[i]
    return out


def render(path: str, image_name: str, rows: Sequence[dict]) -> None:
    """One PNG: per model a row of input, Grad-CAM overlay and per-stage feature-map mosaics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 2 + max(len(r["stages"]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.9 * ncols, 2.2 * len(rows)), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, r in enumerate(rows):
        disp = r["display"]
        cmap = "gray" if disp.ndim == 2 else None
        axes[i, 0].imshow(disp, cmap=cmap)
        axes[i, 0].set_title(r["label"] if len(r["label"]) <= 40 else "…" + r["label"][-39:], fontsize=6)
        axes[i, 1].imshow(disp, cmap=cmap)
        axes[i, 1].imshow(r["heat"], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[i, 1].set_title(f"Grad-CAM: {r['pred'][:18]} {r['prob']:.2f}", fontsize=7)
        for j, (stage, (idx, maps)) in enumerate(r["stages"].items()):
            axes[i, 2 + j].imshow(_mosaic(maps), cmap="viridis", vmin=0, vmax=1)
            axes[i, 2 + j].set_title(f"{stage} ch {','.join(map(str, idx[:4]))}", fontsize=6)
    fig.suptitle(image_name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(models: Sequence[str], images: Sequence[str], out_dir: str, *, maps: int = 4, log=print) -> dict:
    """Explain ``images`` with each model; write <stem>.png per image, index.html, visualize.json."""
    if not 1 <= len(models) <= 2:
        raise UserError(f"--model: give one or two models, got {len(models)}")
    if not images:
        raise UserError("no IMAGE given; e.g. python -m keras_tl.visualize --model runs/x galaxy.png")
    if maps < 1:
        raise UserError(f"--maps: must be >= 1, got {maps}")
    for m in models:
        resolve_model_path(m)
    for p in images:
        if not os.path.isfile(p):
            raise DataError(f"{p}: image file not found")
    views = [ModelView(m) for m in models]
    for v, name in zip(views, distinct_labels(models)):
        v.label = name
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"{out_dir}: cannot create the output directory ({e.strerror or e}); choose another --out") from None
    per_model = []
    for v in views:
        batch = np.stack([load_image(p, v.size, v.channels) for p in images])
        if v.transform is not None:
            from keras_tl.data import scale as scale_lib

            # model.keras takes pixels after the run's input transform (data.nan + data.scale).
            batch = scale_lib.apply(batch, v.transform).numpy()
        heat, classes, probs, stages = v.explain(batch, maps)
        per_model.append((v, batch, heat, classes, probs, stages))
    records, used = [], set()
    for n, img_path in enumerate(images):
        stem = os.path.splitext(os.path.basename(img_path))[0] or "image"
        name, i = stem, 1
        while name in used:
            i += 1
            name = f"{stem}_{i}"
        used.add(name)
        rows, preds = [], []
        for v, batch, heat, classes, probs, stages in per_model:
            c = int(classes[n])
            p = float(probs[n, c]) if probs.shape[-1] > 1 else float(probs[n, 0] if c == 1 else 1 - probs[n, 0])
            pred = v.class_names[c] if c < len(v.class_names) else str(c)
            rows.append({"label": v.label, "display": to_display(batch[n]), "heat": heat[n], "pred": pred, "prob": p,
                         "stages": {s: (idx[n], m[n]) for s, (idx, m) in stages.items()}})
            preds.append({"model": v.path, "predicted": pred, "probability": p,
                          "heat_peak_yx": [int(a) for a in np.unravel_index(np.argmax(heat[n]), heat[n].shape)]})
        png = f"{name}.png"
        render(os.path.join(out_dir, png), os.path.basename(img_path), rows)
        records.append({"image": img_path, "png": png, "predictions": preds})
    summary = {"models": [v.path for v in views], "images": records}
    fs.write_json(os.path.join(out_dir, "visualize.json"), summary)
    write_index(os.path.join(out_dir, "index.html"), summary)
    log(f"keras_tl.visualize: {len(records)} image(s) x {len(views)} model(s) -> {os.path.join(out_dir, 'index.html')}")
    return summary


def write_index(path: str, summary: dict) -> None:
    esc = html.escape
    heads = "".join(f"<th>{esc(os.path.basename(os.path.dirname(m)) or m)}<br><small>{esc(m)}</small></th>" for m in summary["models"])
    body = []
    for r in summary["images"]:
        cells = "".join(f"<td>{esc(p['predicted'])} ({p['probability']:.2f})</td>" for p in r["predictions"])
        body.append(f"<tr><td>{esc(r['image'])}</td>{cells}</tr>\n<tr><td colspan='{1 + len(r['predictions'])}'>"
                    f"<img src='{esc(r['png'])}' style='max-width:100%'></td></tr>")
    page = (
        "<!doctype html><meta charset='utf-8'><title>keras_tl.visualize</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px 8px;text-align:left;vertical-align:top}</style>"
        "<h1>Grad-CAM and feature maps</h1><p>Per model, one row: input, Grad-CAM for the predicted class at the "
        "backbone's last stage, then the most active feature maps at the end of each stage.</p>"
        f"<table><tr><th>image</th>{heads}</tr>\n" + "\n".join(body) + "</table>\n"
    )
    fs.write_text(path, page)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m keras_tl.visualize", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], required=True,
                   help="run directory, export directory or .keras file; give twice to compare two models")
    p.add_argument("--out", default="visualize", help="output directory (default ./visualize)")
    p.add_argument("--maps", type=int, default=4, help="feature maps shown per stage (default 4)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    cli.setup_output()
    return cli.run(_main, p.parse_args(argv))


def _main(args) -> None:
    run(args.model, args.images, args.out, maps=args.maps)


if __name__ == "__main__":
    sys.exit(main())
