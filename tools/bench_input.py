"""Input-pipeline throughput: images/s of keras_tl.data alone (no model).

Generates a folder of JPEGs in a temp dir (sources ~15% larger than the target, so every
image is decoded and resized), builds the train split with build_datasets and times full
epochs after one warm-up epoch. Modes: ``decode+augment`` (cache none: every epoch decodes),
``cached+augment`` (cache memory: what epochs 2+ of a normal run cost), ``decode`` (no
augmentation). The performance issue reads "input headroom" = pipeline ÷ ResNet101 training
throughput (pass --train-ips to print it; about 55 img/s at 64 px, 4 at 224 px on 2 cores).

    python tools/bench_input.py --out /tmp/bench_input.json
    python tools/bench_input.py --sizes 64 --images 256 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def make_jpeg_folder(root: str, n: int, side: int, classes: int = 4, seed: int = 0) -> None:
    """``n`` photo-like JPEGs (smooth structure plus noise) of side×side px in ``classes`` folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = f"class_{i % classes}"
        os.makedirs(os.path.join(root, c), exist_ok=True)
        low = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((side, side), Image.BICUBIC), np.float32)
        img += rng.normal(0, 12, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(root, c, f"{i:05d}.jpg"), quality=90)


def run_mode(root: str, size: int, mode: str, batch: int, epochs: int) -> dict:
    """Images/s of the train split over ``epochs`` timed epochs (after one warm-up epoch)."""
    from keras_tl.data import build_datasets
    from keras_tl.recipe import AugmentConfig, DataConfig, Recipe

    aug = AugmentConfig(flip=True, rot90=True, random_resized_crop=(0.6, 1.0), brightness=0.1, contrast=0.1)
    data = DataConfig(
        source="directory",
        path=root,
        image_size=(size, size),
        batch_size=batch,
        val_fraction=0.0,
        test_fraction=0.0,
        cache="memory" if mode.startswith("cached") else "none",
        augment=aug,
    )
    t0 = time.perf_counter()
    d = build_datasets(Recipe(seed=0, data=data), augment=mode != "decode")
    setup = time.perf_counter() - t0
    n = d.counts["train"]
    for _ in d.train:  # warm-up: tracing, autotune, and filling the cache
        pass
    t0 = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for x, _y in d.train:
            seen += int(x.shape[0])
    dt = time.perf_counter() - t0
    return {"size": size, "mode": mode, "images": n, "epochs": epochs, "seconds": round(dt, 3), "images_per_s": round(seen / dt, 1), "setup_s": round(setup, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    p.add_argument("--images", type=int, default=512, help="JPEGs per size (default 512)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch")
    p.add_argument("--modes", nargs="+", default=["decode+augment", "cached+augment", "decode"], choices=["decode+augment", "cached+augment", "decode"])
    p.add_argument("--train-ips", type=float, nargs="*", default=None, help="training images/s per size, to print the input headroom")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)

    import tensorflow as tf

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_input_") as tmp:
        for size in args.sizes:
            root = os.path.join(tmp, f"jpeg_{size}")
            make_jpeg_folder(root, args.images, int(round(size * 1.15)))
            for mode in args.modes:
                rows.append(run_mode(root, size, mode, args.batch, args.epochs))
    if args.train_ips:
        per_size = dict(zip(args.sizes, args.train_ips))
        for r in rows:
            if r["size"] in per_size:
                r["headroom"] = round(r["images_per_s"] / per_size[r["size"]], 1)
    print(f"{'size':>5} {'mode':<15} {'images/s':>9} {'headroom':>9}")
    for r in rows:
        print(f"{r['size']:>5} {r['mode']:<15} {r['images_per_s']:>9.1f} {r.get('headroom', ''):>9}")
    result = {
        "tool": "bench_input",
        "rows": rows,
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "args": vars(args),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
