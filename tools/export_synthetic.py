"""Export synthetic galaxies as a class-folder image directory (DIR/<class_name>/<index>.png).

    python tools/export_synthetic.py --out DIR --count N --seed S [--image-size 64] [--survey decals]

The result is readable by the ``directory`` data source. File names are the example indices, so an
export can be regenerated or extended exactly.
"""

import argparse
import pathlib
import sys

from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_tl.data import synthetic  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--count", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--start", type=int, default=0, help="first example index")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--survey", default="decals", help=f"one of {sorted(synthetic.SURVEYS)}")
    parser.add_argument("--noise-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.count < 1 or args.start < 0:
        parser.error(f"--count must be >= 1 and --start >= 0. Received: --count {args.count} --start {args.start}")

    for name in synthetic.CLASS_NAMES:
        (args.out / name).mkdir(parents=True, exist_ok=True)
    width = len(str(args.start + args.count - 1))
    step = 1000
    for first in range(args.start, args.start + args.count, step):
        indices = range(first, min(first + step, args.start + args.count))
        try:
            images, labels = synthetic.generate(
                indices, seed=args.seed, image_size=args.image_size, survey=args.survey, noise_scale=args.noise_scale
            )
        except ValueError as error:
            print(f"export_synthetic: {error}", file=sys.stderr)
            return 2
        for index, image, label in zip(indices, images, labels):
            Image.fromarray(image).save(args.out / synthetic.CLASS_NAMES[label] / f"{index:0{width}d}.png")
    print(f"wrote {args.count} images in {synthetic.NUM_CLASSES} class folders under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
