"""Render a contact sheet of synthetic galaxies: a few examples per class, one class per row.

    python tools/contact_sheet.py --out docs/synthetic_galaxies.png [--per-class 8] [--survey decals]
"""

import argparse
import io
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_tl.data import synthetic  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--per-class", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--survey", default="decals")
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args(argv)

    n = synthetic.NUM_CLASSES * args.per_class * 3
    images, labels = synthetic.generate(range(n), seed=args.seed, image_size=args.image_size, survey=args.survey)
    rows = [np.flatnonzero(labels == c)[: args.per_class] for c in range(synthetic.NUM_CLASSES)]

    fig, axes = plt.subplots(
        synthetic.NUM_CLASSES, args.per_class, figsize=(1.1 * args.per_class + 2.2, 1.1 * synthetic.NUM_CLASSES)
    )
    for c, row in enumerate(rows):
        for j, ax in enumerate(axes[c]):
            ax.imshow(images[row[j]], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[c, 0].set_ylabel(synthetic.CLASS_NAMES[c].replace("_", " "), rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"keras_tl synthetic galaxies (survey={args.survey}, {args.image_size} px, seed={args.seed})", fontsize=9)
    fig.subplots_adjust(left=0.2, right=0.99, top=0.95, bottom=0.01, wspace=0.04, hspace=0.04)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=args.dpi)
    # A 256-colour palette keeps the sheet small enough to commit.
    sheet = Image.open(buffer).convert("RGB")
    sheet.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
