"""FITS images (``.fits``, ``.fits.gz``, ``.fz``) read with astropy, as (H, W, C) arrays.

A file holds one object: a 2-D image (one band) or a (C, H, W) cube (FITS stores the band axis
last in its header, NAXIS3, which NumPy sees first). Values come back as astropy gives them
(BSCALE/BZERO applied), NaN included; :mod:`keras_tl.data.scale` decides what NaN becomes.
Any problem raises :class:`FitsError` with a reason meant for the bad-file list.
"""

from __future__ import annotations

import gzip
import io
import warnings
from typing import Optional, Tuple, Union

import numpy as np

FITS_EXTS = (".fits", ".fits.gz", ".fz")

# Truncation is detected below (from each HDU's declared data span) and reported as a bad file;
# astropy's own warning would only add a line per file to the log.
warnings.filterwarnings("ignore", message="File may have been truncated", module="astropy")


class FitsError(ValueError):
    """The file is not a usable FITS image; the message is the reason."""


def is_fits(path: str) -> bool:
    return path.lower().endswith(FITS_EXTS)


def _image_hdus(hdul):
    return [i for i, h in enumerate(hdul) if h.is_image and h.header.get("NAXIS", 0) >= 2]


def _describe(hdul) -> str:
    return ", ".join(f"{i}:{h.name or '-'}({type(h).__name__}, NAXIS={h.header.get('NAXIS', '?')})" for i, h in enumerate(hdul))


def read_fits(data: bytes, hdu: Optional[Union[int, str]] = None) -> Tuple[np.ndarray, int, str]:
    """The image of ``data`` (a FITS file's bytes, gzip-compressed or not) as ``(array (H, W, C)
    in the file's dtype, hdu index, dtype name)``. ``hdu``: index, EXTNAME, or None for the first
    HDU with image data."""
    from astropy.io import fits

    if not data:
        raise FitsError("empty file (0 bytes)")
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise FitsError(f"truncated or corrupt gzip data: {' '.join(str(e).split())[:120]}") from None
    try:
        hdul = fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=False)
    except Exception as e:  # noqa: BLE001 - astropy raises OSError/TypeError/IndexError/... for corrupt files
        raise FitsError(f"not a readable FITS file: {' '.join(str(e).split())[:160] or type(e).__name__}") from None
    with hdul:
        if hdu is None:
            found = _image_hdus(hdul)
            if not found:
                raise FitsError(f"no HDU holds an image (HDUs: {_describe(hdul)}); set data.fits.hdu if the image is elsewhere")
            index = found[0]
        else:
            try:
                index = hdul.index_of(hdu) if isinstance(hdu, str) else int(hdu)
                selected = hdul[index]
            except (KeyError, IndexError):
                raise FitsError(f"has no HDU {hdu!r} (HDUs: {_describe(hdul)})") from None
        selected = hdul[index]
        if not selected.is_image:
            raise FitsError(f"HDU {hdu!r} is a {type(selected).__name__}, not an image (HDUs: {_describe(hdul)})")
        info = selected.fileinfo() or {}
        end = info.get("datLoc", 0) + info.get("datSpan", 0)
        if end > len(data):
            raise FitsError(f"truncated FITS file: {len(data)} bytes, HDU {index} needs {end}")
        try:
            arr = selected.data
        except Exception as e:  # noqa: BLE001 - corrupt data units raise TypeError/ValueError/zlib errors
            raise FitsError(f"cannot read the data of HDU {index}: {' '.join(str(e).split())[:160] or type(e).__name__}") from None
        if arr is None:
            raise FitsError(f"HDU {index} holds no data (HDUs: {_describe(hdul)}); set data.fits.hdu to the image's HDU")
        arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3:
        arr = np.transpose(arr, (1, 2, 0))  # (C, H, W) -> (H, W, C)
    else:
        raise FitsError(f"HDU {index} has shape {arr.shape}; expected a 2-D image (H, W) or a cube (C, H, W)")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise FitsError(f"HDU {index} holds {arr.dtype} values, not real numbers")
    dtype = arr.dtype.newbyteorder("=").name
    return arr, index, dtype


def load(path: str, hdu: Optional[Union[int, str]] = None) -> np.ndarray:
    """A FITS file (local or gs://) as float32 (H, W, C); FitsError with the reason otherwise."""
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    arr, _, _ = read_fits(data, hdu)
    return arr.astype(np.float32)
