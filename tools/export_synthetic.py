"""Export synthetic galaxies as a class-folder directory (DIR/<class_name>/<index>.<ext>).

    python tools/export_synthetic.py --out DIR --count N --seed S [--image-size 64] [--survey decals]
        [--format png|npy|fits] [--output uint8|float] [--bands 3] [--mask-fraction 0] [--compress none|gz|fz]

``--format png`` (the default) writes uint8 RGB PNGs. ``--format fits`` writes one FITS file per
object: a (C, H, W) cube of float32 fluxes (``--output float``, any ``--bands``) or uint8 RGB
(``--output uint8``), optionally gzip-compressed (``.fits.gz``) or tile-compressed (``.fz``,
lossless). ``--format npy`` writes (H, W, C) arrays. ``--mask-fraction F`` sets about that
fraction of each float image's pixels to NaN (whole pixels in every band, chosen from (seed, index)),
like masked pixels in survey cutouts. The result is readable by the ``directory`` data source.
File names are the example indices, so an export can be regenerated or extended exactly.
"""

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_tl.data import synthetic  # noqa: E402

EXT = {("png", "none"): ".png", ("npy", "none"): ".npy", ("fits", "none"): ".fits", ("fits", "gz"): ".fits.gz",
       ("fits", "fz"): ".fz"}


def mask(image: np.ndarray, index: int, seed: int, fraction: float) -> np.ndarray:
    """``image`` (H, W, C) with about ``fraction`` of its pixels NaN in every band (deterministic)."""
    if fraction <= 0:
        return image
    rng = np.random.default_rng([seed, index, 0x6D61736B])  # "mask": a stream apart from the galaxy's
    out = image.copy()
    out[rng.random(image.shape[:2]) < fraction] = np.nan
    return out


def write_fits(path: pathlib.Path, image: np.ndarray, compress: str) -> None:
    from astropy.io import fits

    cube = np.ascontiguousarray(np.transpose(image, (2, 0, 1)))  # (H, W, C) -> (C, H, W): NAXIS3 = band
    if compress == "fz":
        # quantize_level 0: no quantisation, lossless GZIP_2 (float fluxes stay bit-exact).
        hdul = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(cube, compression_type="GZIP_2", quantize_level=0.0)])
    else:
        hdul = fits.HDUList([fits.PrimaryHDU(cube)])
    tmp = path.with_name(path.name + ".tmp")
    if compress == "gz":
        import gzip
        import io

        buf = io.BytesIO()
        hdul.writeto(buf)
        tmp.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    else:
        hdul.writeto(tmp, overwrite=True)
    tmp.replace(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--count", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--start", type=int, default=0, help="first example index")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--survey", default="decals", help=f"one of {sorted(synthetic.SURVEYS)}")
    parser.add_argument("--noise-scale", type=float, default=1.0)
    parser.add_argument("--format", choices=("png", "npy", "fits"), default="png")
    parser.add_argument("--output", choices=synthetic.OUTPUTS, default="uint8", help="uint8 RGB or float fluxes")
    parser.add_argument("--bands", type=int, default=3, help="bands of float output (uint8 is RGB: 3)")
    parser.add_argument("--mask-fraction", type=float, default=0.0, help="fraction of pixels set to NaN (float output)")
    parser.add_argument("--compress", choices=("none", "gz", "fz"), default="none", help="FITS only")
    args = parser.parse_args(argv)
    if args.count < 1 or args.start < 0:
        parser.error(f"--count must be >= 1 and --start >= 0. Received: --count {args.count} --start {args.start}")
    if args.format == "png" and args.output != "uint8":
        parser.error("--format png holds uint8 RGB; use --format fits or npy for --output float")
    if args.compress != "none" and args.format != "fits":
        parser.error(f"--compress {args.compress} applies to --format fits only")
    if not 0 <= args.mask_fraction < 1 or (args.mask_fraction and args.output != "float"):
        parser.error(f"--mask-fraction must be in [0, 1) and needs --output float (NaN is not a uint8 value). Received: {args.mask_fraction}")
    ext = EXT[(args.format, args.compress)]

    for name in synthetic.CLASS_NAMES:
        (args.out / name).mkdir(parents=True, exist_ok=True)
    width = len(str(args.start + args.count - 1))
    step = 1000
    for first in range(args.start, args.start + args.count, step):
        indices = range(first, min(first + step, args.start + args.count))
        try:
            images, labels = synthetic.generate(
                indices, seed=args.seed, image_size=args.image_size, survey=args.survey, noise_scale=args.noise_scale,
                output=args.output, bands=args.bands if args.output == "float" else 3,
            )
        except ValueError as error:
            print(f"export_synthetic: {error}", file=sys.stderr)
            return 2
        for index, image, label in zip(indices, images, labels):
            path = args.out / synthetic.CLASS_NAMES[label] / f"{index:0{width}d}{ext}"
            if args.format == "png":
                from PIL import Image

                Image.fromarray(image).save(path)
            elif args.format == "npy":
                np.save(path, mask(image, index, args.seed, args.mask_fraction))
            else:
                write_fits(path, mask(image, index, args.seed, args.mask_fraction), args.compress)
    kind = f"{args.output} {ext} files" + (f" ({args.bands} bands)" if args.output == "float" else "")
    print(f"wrote {args.count} {kind} in {synthetic.NUM_CLASSES} class folders under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
