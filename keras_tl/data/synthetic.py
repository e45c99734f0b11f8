"""Synthetic telescope cutouts: procedural galaxies in the 10 Galaxy10 DECaLS morphology classes.

Each example is a sky patch holding one galaxy (two for ``merging``) built from Sérsic bulges,
exponential disks, logarithmic spiral arms, bars, thin edge-on disks, tidal tails and star-forming
clumps, seen through a :class:`Survey`: per-band gain, Gaussian PSF, sky and source noise,
foreground stars. Output is either an asinh-stretched uint8 RGB cutout (z, r, g -> R, G, B, like
public survey viewers) or linear float fluxes in any number of bands.

Example ``i`` depends only on ``(seed, i, image_size, survey, bands, output, noise_scale)``.
The galaxy itself depends only on ``(seed, i)``: the same index seen by two surveys or at two
image sizes is the same object, which makes source-vs-target telescope studies paired.
``image_size`` changes the pixel sampling of a fixed field of view, not the field of view.
Results are bit-identical for a given NumPy build and CPU; other CPUs may differ in the last bits
of float outputs (SIMD transcendental functions).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from collections.abc import Iterable

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "disturbed",
    "merging",
    "round_smooth",
    "in_between_round_smooth",
    "cigar_shaped_smooth",
    "barred_spiral",
    "unbarred_tight_spiral",
    "unbarred_loose_spiral",
    "edge_on_without_bulge",
    "edge_on_with_bulge",
)
NUM_CLASSES = len(CLASS_NAMES)
OUTPUTS = ("uint8", "float")


@dataclasses.dataclass(frozen=True)
class Survey:
    """What differs between telescopes.

    psf_fwhm: Gaussian PSF FWHM in pixels of a 64 px cutout (scaled with image_size).
    sky_noise: per-pixel sky noise sigma of a 64 px cutout, in the generator's flux units.
    band_response: per-band gain from bluest to reddest band. When ``bands`` differs from its
        length, the gains are linearly interpolated over the band order.
    star_density: mean number of foreground stars per cutout.
    """

    name: str = "decals"
    psf_fwhm: float = 2.0
    sky_noise: float = 0.03
    band_response: tuple[float, ...] = (1.0, 1.0, 1.0)
    star_density: float = 1.0

    def __post_init__(self):
        if not self.psf_fwhm > 0:
            raise ValueError(f"Survey {self.name!r}: psf_fwhm must be > 0. Received: psf_fwhm={self.psf_fwhm}")
        if not self.sky_noise >= 0:
            raise ValueError(f"Survey {self.name!r}: sky_noise must be >= 0. Received: sky_noise={self.sky_noise}")
        if not self.star_density >= 0:
            raise ValueError(
                f"Survey {self.name!r}: star_density must be >= 0. Received: star_density={self.star_density}"
            )
        response = tuple(float(g) for g in self.band_response)
        if not response or min(response) <= 0:
            raise ValueError(
                f"Survey {self.name!r}: band_response must be non-empty positive gains. "
                f"Received: band_response={self.band_response}"
            )
        object.__setattr__(self, "band_response", response)


SURVEYS: dict[str, Survey] = {
    "decals": Survey(),
    # Deep and sharp (HSC-like): sub-arcsecond seeing, 2.5x lower sky noise, more faint stars.
    "hsc": Survey(name="hsc", psf_fwhm=1.2, sky_noise=0.012, band_response=(0.95, 1.0, 1.1), star_density=1.6),
    # Shallow and blurry (SDSS-like): faint arms and tails drown in noise.
    "sdss": Survey(name="sdss", psf_fwhm=3.4, sky_noise=0.075, band_response=(1.1, 1.0, 0.85), star_density=0.7),
}

# Per-example uniforms: a fixed count, so the galaxy does not depend on survey, size or bands.
_N_UNIFORMS = 112
_COMMON, _CLASS, _CLUMPS, _STARS = 0, 9, 40, 72
_MAX_CLUMPS = 8
_MAX_STARS = 8
_CHUNK = 64
_RGB_SCALE = np.array([0.85, 1.0, 1.45], np.float32)  # R, G, B weights that make a disk look white-blue
_STRETCH_SOFT = 0.04  # asinh softening: below it the stretch is linear
_STRETCH_MAX = 3.0  # flux that maps to 255
_STRETCH_LUT = 1 << 15
_POISSON_REF = 0.4  # source flux at which photon noise equals sky noise


def label_of(index: int, seed: int) -> int:
    """The class of example ``index`` under ``seed``; every block of 10 indices holds each class once."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative integer. Received: index={index!r}")
    return int(_block_permutation(_check_seed(seed), int(index) // NUM_CLASSES)[int(index) % NUM_CLASSES])


def labels_of(indices: Iterable[int], seed: int) -> np.ndarray:
    """Classes of examples ``indices`` (int32), without rendering them."""
    idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
    if idx.ndim != 1 or (idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0)):
        raise ValueError(f"indices must be a 1-D sequence of non-negative integers. Received: {indices!r}")
    return _labels(idx.astype(np.int64), seed)


def generate(
    indices: Iterable[int],
    *,
    seed: int,
    image_size: int = 64,
    survey: str | Survey = "decals",
    bands: int = 3,
    output: str = "uint8",
    noise_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Render examples ``indices``.

    Returns ``(images, labels)``: images are ``(N, S, S, 3)`` uint8 RGB for ``output="uint8"``
    (requires ``bands=3``) or ``(N, S, S, bands)`` float32 linear fluxes (bluest band first, sky
    noise sigma about ``survey.sky_noise * noise_scale``) for ``output="float"``; labels are ``(N,)``
    int32 indices into :data:`CLASS_NAMES`.
    """
    idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
    if idx.ndim != 1 or (idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0)):
        raise ValueError(f"indices must be a 1-D sequence of non-negative integers. Received: {indices!r}")
    idx = idx.astype(np.int64)
    seed = _check_seed(seed)
    survey = _resolve_survey(survey)
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}. Received: output={output!r}")
    if isinstance(bands, bool) or not isinstance(bands, (int, np.integer)) or bands < 1:
        raise ValueError(f"bands must be a positive integer. Received: bands={bands!r}")
    if output == "uint8" and bands != 3:
        raise ValueError(f"output='uint8' is RGB and needs bands=3. Received: bands={bands}; use output='float'.")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8. Received: image_size={image_size!r}")
    if not noise_scale >= 0:
        raise ValueError(f"noise_scale must be >= 0. Received: noise_scale={noise_scale!r}")

    labels = _labels(idx, seed)
    size, bands = int(image_size), int(bands)
    shape = (len(idx), size, size) + ((3,) if output == "uint8" else (bands,))
    images = np.empty(shape, np.uint8 if output == "uint8" else np.float32)
    for start in range(0, len(idx), _CHUNK):
        stop = start + _CHUNK
        flux = _render(idx[start:stop], labels[start:stop], seed, size, survey, bands, float(noise_scale))
        images[start:stop] = _to_uint8(flux) if output == "uint8" else flux.transpose(0, 2, 3, 1)
    return images, labels


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer. Received: seed={seed!r}")
    return int(seed)


def _resolve_survey(survey: str | Survey) -> Survey:
    if isinstance(survey, Survey):
        return survey
    if survey not in SURVEYS:
        raise ValueError(f"Unknown survey. Received: survey={survey!r}; known: {sorted(SURVEYS)} or a Survey(...).")
    return SURVEYS[survey]


def _labels(indices: np.ndarray, seed: int) -> np.ndarray:
    """Balanced labels: a seeded permutation of the 10 classes per block of 10 indices."""
    seed = _check_seed(seed)
    blocks = indices // NUM_CLASSES
    labels = np.empty(len(indices), np.int32)
    for k, (block, pos) in enumerate(zip(blocks.tolist(), (indices % NUM_CLASSES).tolist())):
        labels[k] = _block_permutation(seed, block)[pos]
    return labels


@functools.lru_cache(maxsize=1 << 16)
def _block_permutation(seed: int, block: int) -> tuple[int, ...]:
    # Three words: a stream distinct from the per-example [seed, index] streams.
    return tuple(np.random.Generator(np.random.PCG64([seed, block, 0x1ABE1])).permutation(NUM_CLASSES).tolist())


def _band_wavelengths(bands: int) -> np.ndarray:
    """Effective wavelengths (nm): g..z for up to 4 bands, g..y for 5 or more."""
    if bands == 1:
        return np.array([620.0])
    return np.geomspace(475.0, 925.0 if bands <= 4 else 1000.0, bands)


def _band_response(survey: Survey, bands: int) -> np.ndarray:
    gains = np.asarray(survey.band_response, np.float64)
    if len(gains) == bands:
        return gains
    if len(gains) == 1:
        return np.full(bands, gains[0])
    return np.interp(np.linspace(0, 1, bands), np.linspace(0, 1, len(gains)), gains)


# ----------------------------------------------------------------------------- parameters


def _lin(u, lo, hi):
    return lo + (hi - lo) * u


def _log(u, lo, hi):
    return lo * (hi / lo) ** u


def _pick(u, choices):
    choices = np.asarray(choices)
    return choices[np.minimum((u * len(choices)).astype(int), len(choices) - 1)]


def _inclined_q(u, q0=0.15, max_deg=62.0):
    """Projected axis ratio of a thick disk with a random inclination up to ``max_deg``."""
    cos_i = np.cos(np.radians(_lin(u, 0.0, max_deg)))
    return np.sqrt(cos_i**2 * (1 - q0**2) + q0**2)


class _Parts:
    """Component tables (one row per component) collected for one chunk of examples."""

    def __init__(self):
        self.rows: dict[str, list[dict[str, np.ndarray]]] = {"sersic": [], "disk": [], "edge": [], "blob": []}

    def add(self, kind: str, img, **params):
        n = len(img)
        row = {"img": np.asarray(img)}
        row.update({k: np.broadcast_to(np.asarray(v, np.float64), (n,)) for k, v in params.items()})
        self.rows[kind].append(row)

    def table(self, kind: str) -> dict[str, np.ndarray] | None:
        rows = [r for r in self.rows[kind] if len(r["img"])]
        if not rows:
            return None
        return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def _sersic(parts, img, x, y, pa, q, re, n, flux, blue, disk_q=1.0, phi=0.0):
    """A Sérsic component with axis ratio ``q`` at angle ``phi`` inside a disk plane seen at ``disk_q``."""
    parts.add("sersic", img, x=x, y=y, pa=pa, q=q, re=re, n=n, flux=flux, blue=blue, disk_q=disk_q, phi=phi)


def _disk(parts, img, x, y, pa, q, h, flux, blue, arm_amp=0.0, arms=2, pitch=20.0, arm_k=3.0, phase=0.0, r_in=1.0):
    """An exponential disk, optionally modulated by ``arms`` logarithmic spiral arms of ``pitch`` degrees."""
    parts.add(
        "disk", img, x=x, y=y, pa=pa, q=q, h=h, flux=flux, blue=blue,
        arm_amp=arm_amp, arms=arms, pitch=pitch, arm_k=arm_k, phase=phase, r_in=r_in,
    )  # fmt: skip


def _build_parts(labels: np.ndarray, u: np.ndarray) -> tuple[_Parts, dict[str, np.ndarray]]:
    """Map per-example uniforms to component tables; lengths in pixels of a 64 px cutout."""
    parts = _Parts()
    c = u[:, _COMMON:_CLASS]
    common = {
        "scale": _log(c[:, 0], 0.75, 1.45),
        "flux": _log(c[:, 1], 12.0, 90.0),
        "x": _lin(c[:, 2], -3.0, 3.0),
        "y": _lin(c[:, 3], -3.0, 3.0),
        "pa": _lin(c[:, 4], 0.0, np.pi),
        "psf": _lin(c[:, 5], 0.85, 1.15),
        "sky": _lin(c[:, 6], 0.85, 1.2),
        "beta_red": _lin(c[:, 7], 1.2, 2.2),
        "beta_blue": _lin(c[:, 8], -1.2, -0.2),
    }
    n_clumps = np.zeros(len(labels), int)
    clump_frac = np.zeros(len(labels))
    clump_spread = np.ones(len(labels))
    for label, build in enumerate(_BUILDERS):
        img = np.flatnonzero(labels == label)
        if len(img):
            g = {k: v[img] for k, v in common.items()}
            nc, cf, cs = build(parts, img, g, u[img, _CLASS:_CLUMPS])
            n_clumps[img], clump_frac[img], clump_spread[img] = nc, cf, cs
    _add_clumps(parts, u[:, _CLUMPS:_STARS], common, n_clumps, clump_frac, clump_spread)
    return parts, common


def _smooth(q_lo, q_hi, n_lo, n_hi, re_lo, re_hi, blue_hi):
    def build(parts, img, g, v):
        q = _lin(v[:, 0], q_lo, q_hi)
        re = g["scale"] * _lin(v[:, 1], re_lo, re_hi)
        _sersic(parts, img, g["x"], g["y"], g["pa"], q, re, _lin(v[:, 2], n_lo, n_hi), g["flux"],
                _lin(v[:, 3], 0.0, blue_hi))  # fmt: skip
        return 0, 0.0, 1.0

    return build


def _edge_on(bulge_lo, bulge_hi):
    def build(parts, img, g, v):
        h = g["scale"] * _lin(v[:, 0], 3.0, 4.8)
        z0 = h * _lin(v[:, 1], 0.08, 0.16)
        bulge = _lin(v[:, 2], bulge_lo, bulge_hi)
        lane = _lin(v[:, 3], -0.4, 0.4)
        parts.add("edge", img, x=g["x"], y=g["y"], pa=g["pa"], h=h, z0=z0, flux=g["flux"] * (1 - bulge),
                  blue=_lin(v[:, 4], 0.35, 0.7), dust=_lin(v[:, 5], 0.0, 0.6), lane=lane)  # fmt: skip
        re = np.maximum(h * _lin(v[:, 6], 0.22, 0.4), 1.2)
        _sersic(parts, img, g["x"], g["y"], g["pa"], _lin(v[:, 7], 0.65, 0.95), re, _lin(v[:, 8], 1.5, 3.5),
                g["flux"] * bulge, _lin(v[:, 9], 0.05, 0.25))  # fmt: skip
        return 0, 0.0, 1.0

    return build


def _spiral(bulge_lo, bulge_hi, pitch_lo, pitch_hi, arms, barred, clumps_max):
    def build(parts, img, g, v):
        h = g["scale"] * _lin(v[:, 0], 4.0, 6.5)
        q = _inclined_q(v[:, 1])
        bulge = _lin(v[:, 2], bulge_lo, bulge_hi)
        bar = _lin(v[:, 3], 0.12, 0.28) if barred else np.zeros(len(img))
        disk_flux = g["flux"] * (1 - bulge - bar)
        phi = _lin(v[:, 4], 0.0, 2 * np.pi)
        bar_len = h * _lin(v[:, 5], 1.0, 1.6)
        r_in = bar_len if barred else h * _lin(v[:, 5], 0.3, 0.8)
        m = np.full(len(img), 2) if barred else _pick(v[:, 6], arms)
        _disk(parts, img, g["x"], g["y"], g["pa"], q, h, disk_flux, _lin(v[:, 7], 0.6, 0.95),
              arm_amp=_lin(v[:, 8], 0.35, 0.9), arms=m, pitch=_lin(v[:, 9], pitch_lo, pitch_hi),
              arm_k=_lin(v[:, 10], 2.0, 5.0), phase=-m * phi if barred else phi, r_in=r_in)  # fmt: skip
        re = np.maximum(h * _lin(v[:, 11], 0.15, 0.3), 0.8)
        _sersic(parts, img, g["x"], g["y"], g["pa"], 1.0, re, _lin(v[:, 12], 1.5, 4.0), g["flux"] * bulge,
                _lin(v[:, 13], 0.05, 0.25), disk_q=q)  # fmt: skip
        if barred:
            _sersic(parts, img, g["x"], g["y"], g["pa"], _lin(v[:, 14], 0.2, 0.35), bar_len * 0.6, 0.5,
                    g["flux"] * bar, _lin(v[:, 15], 0.1, 0.35), disk_q=q, phi=phi)  # fmt: skip
        return (_pick(v[:, 16], range(clumps_max + 1)), _lin(v[:, 17], 0.03, 0.1), h * 1.2)

    return build


def _merging(parts, img, g, v):
    sep = g["scale"] * _lin(v[:, 0], 6.0, 15.0)
    angle = _lin(v[:, 1], 0.0, 2 * np.pi)
    ratio = _lin(v[:, 2], 0.35, 1.0)
    f1, f2 = g["flux"] / (1 + ratio), g["flux"] * ratio / (1 + ratio)
    dx, dy = 0.5 * sep * np.cos(angle), 0.5 * sep * np.sin(angle)
    tail = _lin(v[:, 3], 0.2, 0.4)
    spin = np.where(v[:, 4] < 0.5, 1.0, -1.0)
    for k, (flux, sx) in enumerate(((f1, 1.0), (f2, -1.0))):
        o = 5 + 9 * k
        x, y = g["x"] + sx * dx, g["y"] + sx * dy
        pa = _lin(v[:, o], 0.0, np.pi)
        q = _lin(v[:, o + 1], 0.45, 1.0)
        h = g["scale"] * _lin(v[:, o + 2], 2.5, 4.5) * np.sqrt(flux / f1)
        bulge = _lin(v[:, o + 3], 0.3, 0.7)
        _sersic(parts, img, x, y, pa, q, np.maximum(h * 0.4, 0.8), _lin(v[:, o + 4], 1.5, 4.0), flux * bulge,
                _lin(v[:, o + 5], 0.05, 0.35))  # fmt: skip
        # Tidal tails: a single narrow open arm far outside the disk, pointing away from the partner.
        _disk(parts, img, x, y, pa, q, h, flux * (1 - bulge) * (1 - tail), 0.6)
        _disk(parts, img, x, y, angle + np.pi * (k == 1), 1.0, h * _lin(v[:, o + 6], 2.0, 3.2),
              flux * (1 - bulge) * tail, 0.55, arm_amp=1.0, arms=1, pitch=spin * _lin(v[:, o + 7], 15.0, 30.0),
              arm_k=_lin(v[:, o + 8], 3.0, 6.0), phase=0.0, r_in=h * 1.2)  # fmt: skip
    return 0, 0.0, 1.0


def _disturbed(parts, img, g, v):
    h = g["scale"] * _lin(v[:, 0], 4.5, 7.0)
    q = _inclined_q(v[:, 1], max_deg=55.0)
    bulge = _lin(v[:, 2], 0.0, 0.25)
    clumps = _lin(v[:, 3], 0.15, 0.4)
    tail = np.where(v[:, 4] < 0.35, _lin(v[:, 5], 0.08, 0.2), 0.0)
    disk = g["flux"] * (1 - bulge - clumps - tail)
    # Lopsided: a broad one-armed mode and a bulge off the disk centre.
    _disk(parts, img, g["x"], g["y"], g["pa"], q, h, disk, _lin(v[:, 6], 0.55, 0.9),
          arm_amp=_lin(v[:, 7], 0.5, 0.95), arms=1, pitch=_lin(v[:, 8], 25.0, 50.0),
          arm_k=_lin(v[:, 9], 0.8, 2.0), phase=_lin(v[:, 10], 0.0, 2 * np.pi), r_in=h * 0.5)  # fmt: skip
    off = _lin(v[:, 11], 0.5, 3.0)
    ang = _lin(v[:, 12], 0.0, 2 * np.pi)
    _sersic(parts, img, g["x"] + off * np.cos(ang), g["y"] + off * np.sin(ang), g["pa"], _lin(v[:, 13], 0.6, 1.0),
            np.maximum(h * 0.25, 0.8), _lin(v[:, 14], 1.0, 3.0), g["flux"] * bulge, 0.2)  # fmt: skip
    _disk(parts, img, g["x"], g["y"], _lin(v[:, 15], 0.0, 2 * np.pi), 1.0, h * 2.2, g["flux"] * tail, 0.6,
          arm_amp=1.0, arms=1, pitch=_lin(v[:, 16], 15.0, 35.0), arm_k=4.0, phase=0.0, r_in=h)  # fmt: skip
    return _pick(v[:, 17], range(3, _MAX_CLUMPS + 1)), clumps, h * 1.3


_BUILDERS = (
    _disturbed,
    _merging,
    _smooth(0.74, 1.0, 2.5, 5.0, 4.0, 9.0, 0.15),  # round_smooth
    _smooth(0.45, 0.8, 2.0, 4.5, 4.0, 9.0, 0.2),  # in_between_round_smooth
    _smooth(0.18, 0.45, 1.0, 2.5, 5.0, 10.0, 0.3),  # cigar_shaped_smooth
    _spiral(0.08, 0.3, 12.0, 30.0, (2,), barred=True, clumps_max=2),
    _spiral(0.1, 0.4, 9.0, 18.0, (2, 2, 3), barred=False, clumps_max=1),
    _spiral(0.0, 0.2, 20.0, 38.0, (2, 2, 3), barred=False, clumps_max=3),
    _edge_on(0.0, 0.06),
    _edge_on(0.22, 0.55),
)


def _add_clumps(parts, v, common, n_clumps, frac, spread):
    """Blue star-forming knots scattered around the galaxy: most in disturbed, a few in spirals."""
    k = np.arange(_MAX_CLUMPS)
    on = k[None, :] < n_clumps[:, None]
    if not on.any():
        return
    v = v.reshape(len(n_clumps), _MAX_CLUMPS, 4)
    weight = np.where(on, _log(v[..., 3], 0.3, 1.0), 0.0)
    flux = common["flux"][:, None] * frac[:, None] * weight / np.maximum(weight.sum(1, keepdims=True), 1e-9)
    radius = spread[:, None] * np.sqrt(v[..., 0])
    angle = 2 * np.pi * v[..., 1]
    img, slot = np.nonzero(on)
    parts.add(
        "blob", img,
        x=common["x"][img] + (radius * np.cos(angle))[img, slot],
        y=common["y"][img] + (radius * np.sin(angle))[img, slot],
        sigma=_lin(v[..., 2], 0.6, 1.6)[img, slot], flux=flux[img, slot], blue=0.95,
    )  # fmt: skip


def _add_stars(parts, v, density):
    """Foreground stars: a Poisson count (inverse CDF of one uniform) at uniform positions."""
    n = len(v)
    cdf = np.cumsum([math.exp(-density) * density**k / math.factorial(k) for k in range(_MAX_STARS)])
    count = np.searchsorted(cdf, v[:, 0], side="right")
    slots = v[:, 1 : 1 + 4 * _MAX_STARS].reshape(n, _MAX_STARS, 4)
    img, slot = np.nonzero(np.arange(_MAX_STARS)[None, :] < count[:, None])
    s = slots[img, slot]
    half = 32.0
    parts.add("blob", img, x=_lin(s[:, 0], -half, half), y=_lin(s[:, 1], -half, half), sigma=0.0,
              flux=_log(s[:, 2], 0.3, 80.0), blue=_lin(s[:, 3], 0.0, 1.0))  # fmt: skip


# ----------------------------------------------------------------------------- rendering


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in units of 64 px pixels, as broadcastable row/column vectors."""
    t = ((np.arange(size) - (size - 1) / 2) * (64.0 / size)).astype(np.float32)
    return t[None, None, :], t[None, :, None]


def _col(a) -> np.ndarray:
    return np.asarray(a, np.float32)[:, None, None]


def _affine(t, x0, y0, pa, q, phi=None, q_in=None):
    """Coordinates in a component's own frame: rotate by pa, deproject by q, then rotate by phi in-plane."""
    c, s = np.cos(pa), np.sin(pa)
    a = np.stack([np.stack([c, s], -1), np.stack([-s / q, c / q], -1)], -2)
    if phi is not None:
        cp, sp = np.cos(phi), np.sin(phi)
        b = np.stack([np.stack([cp, sp], -1), np.stack([-sp / q_in, cp / q_in], -1)], -2)
        a = b @ a
    xg, yg = t
    dx, dy = xg - _col(x0), yg - _col(y0)
    return _col(a[:, 0, 0]) * dx + _col(a[:, 0, 1]) * dy, _col(a[:, 1, 0]) * dx + _col(a[:, 1, 1]) * dy


def _render_sersic(p, t):
    n = p["n"]
    b = 2 * n - 1 / 3 + 4 / (405 * n)
    log_norm = np.array([math.lgamma(2 * k) for k in n]) + np.log(n) + b - 2 * n * np.log(b)
    area = 2 * np.pi * p["re"] ** 2 * p["q"] * p["disk_q"]
    ie = p["flux"] / area * np.exp(-log_norm)
    xr, yr = _affine(t, p["x"], p["y"], p["pa"], p["disk_q"], p["phi"], p["q"])
    log_r2 = np.log(xr * xr + yr * yr + np.float32(1e-4))
    # (r/re)^(1/n) as exp(log(r^2) / 2n - log(re) / n): two exp/log passes instead of a pow.
    arg = np.exp(log_r2 * _col(0.5 / n) - _col(np.log(p["re"]) / n))
    return _col(ie) * np.exp(_col(-b) * (arg - 1))


def _render_disk(p, t):
    i0 = p["flux"] / (2 * np.pi * p["h"] ** 2 * p["q"])
    xd, yd = _affine(t, p["x"], p["y"], p["pa"], p["q"])
    r = np.sqrt(xd * xd + yd * yd)
    out = _col(i0) * np.exp(r * _col(-1.0 / p["h"]))
    armed = np.flatnonzero(p["arm_amp"] > 0)
    if len(armed):
        a = {k: v[armed] for k, v in p.items()}
        ra, theta = r[armed], np.arctan2(yd[armed], xd[armed])
        wind = 1.0 / np.tan(np.radians(a["pitch"]))
        phase = _col(a["arms"]) * (theta - _col(wind) * np.log(ra * _col(1 / a["r_in"]) + np.float32(1e-3)))
        k = a["arm_k"]
        # exp(k (cos - 1)) is a von Mises arm profile; dividing by its mean I0(k) e^-k keeps disk flux.
        arm = np.exp(_col(k) * (np.cos(phase + _col(a["phase"])) - 1)) * _col(1 / (np.i0(k) * np.exp(-k)))
        on = _col(a["arm_amp"]) * (1 - np.exp(-(ra * _col(1 / a["r_in"])) ** 2))
        out[armed] *= 1 + on * (arm - 1)
    return out


def _render_edge(p, t):
    i0 = p["flux"] / (8 * p["h"] * p["z0"])
    xr, yr = _affine(t, p["x"], p["y"], p["pa"], np.ones_like(p["pa"]))
    ax = np.abs(xr) * _col(1 / p["h"])
    z = yr * _col(1 / p["z0"])
    # (1 + |x|/h) e^-|x|/h approximates the projected edge-on exponential; sech^2 is the vertical profile.
    e = np.exp(-2 * np.abs(z))
    light = (1 + ax) * np.exp(-ax) * (4 * e / (1 + e) ** 2)
    lane = 1 - _col(p["dust"]) * np.exp(-2.0 * (z - _col(p["lane"])) ** 2) * np.exp(-0.5 * ax)
    return _col(i0) * light * lane


def _render_blob(p, t, size):
    # Floor at half a pixel so a point source keeps its flux when sampled on the pixel grid.
    sigma = np.sqrt(p["sigma"] ** 2 + (0.5 * 64.0 / size) ** 2)
    xg, yg = t
    gx = np.exp(-0.5 * ((xg[0] - p["x"][:, None].astype(np.float32)) / sigma[:, None].astype(np.float32)) ** 2)
    gy = np.exp(-0.5 * ((yg[0, :, 0] - p["y"][:, None].astype(np.float32)) / sigma[:, None].astype(np.float32)) ** 2)
    norm = (p["flux"] / (2 * np.pi * sigma**2)).astype(np.float32)
    return (gy * norm[:, None])[:, :, None] * gx[:, None, :]


def _rank_within(img: np.ndarray) -> np.ndarray:
    """For each row, how many earlier rows belong to the same image."""
    order = np.argsort(img, kind="stable")
    sorted_img = img[order]
    starts = np.r_[True, sorted_img[1:] != sorted_img[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(img)), 0))
    rank = np.empty(len(img), np.int64)
    rank[order] = np.arange(len(img)) - group_start
    return rank


def _psf_matrices(sigma_px: np.ndarray, size: int) -> np.ndarray:
    """Toeplitz Gaussian blur matrices G (N, S, S); G @ image @ G blurs rows and columns."""
    d = np.arange(-(size - 1), size)
    kernel = np.exp(-0.5 * (d[None, :] / sigma_px[:, None]) ** 2)
    kernel /= kernel.sum(1, keepdims=True)
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :] + size - 1
    return kernel[:, offsets].astype(np.float32)


def _render(indices, labels, seed, size, survey, bands, noise_scale):
    """Linear fluxes (N, S, S, bands) float32 for one chunk."""
    n = len(indices)
    u = np.empty((n, _N_UNIFORMS))
    n_noise = bands * size * size
    raw = np.empty((n, (n_noise + 3) // 4), np.uint64)
    for k, i in enumerate(indices.tolist()):
        rng = np.random.Generator(np.random.PCG64([seed, i]))
        u[k] = rng.random(_N_UNIFORMS)
        raw[k] = rng.bit_generator.random_raw(raw.shape[1])
    # Gaussian noise by table lookup of 16-bit quantiles: 4x faster than standard_normal.
    noise = _normal_table()[raw.view(np.uint16)[:, :n_noise]].reshape(n, bands, size, size)

    parts, common = _build_parts(labels, u)
    _add_stars(parts, u[:, _STARS:], survey.star_density)
    t = _grid(size)
    maps = np.zeros((n, 2, size, size), np.float32)  # red (old stars) and blue (young stars) light
    renderers = {"sersic": _render_sersic, "disk": _render_disk, "edge": _render_edge,
                 "blob": lambda p, t: _render_blob(p, t, size)}  # fmt: skip
    for kind, render in renderers.items():
        p = parts.table(kind)
        if p is None:
            continue
        light = render(p, t)
        young = light * _col(p["blue"])
        light -= young
        # Add rows in passes where each image appears once: fancy += drops repeats, and np.add.at
        # and reduceat are ~10x slower. An image's rows keep their order, so sums are index-independent.
        img = p["img"]
        rank = _rank_within(img)
        for r in range(rank.max() + 1):
            sel = np.flatnonzero(rank == r)
            maps[img[sel], 0] += light[sel]
            maps[img[sel], 1] += young[sel]

    g = _psf_matrices(survey.psf_fwhm / 2.3548 * common["psf"] * size / 64.0, size)[:, None]
    maps = g @ maps @ g

    lam = _band_wavelengths(bands)[None, :] / 620.0
    sed = np.stack([lam ** common["beta_red"][:, None], lam ** common["beta_blue"][:, None]], 1)
    sed *= bands / sed.sum(-1, keepdims=True)
    sed *= _band_response(survey, bands)[None, None, :]
    sed = sed.astype(np.float32).transpose(0, 2, 1)
    flux = (sed @ maps.reshape(n, 2, size * size)).reshape(n, bands, size, size)

    # Noise per pixel scales with pixel size (64 / S): the field of view is fixed.
    sky = _col(survey.sky_noise * noise_scale * common["sky"] * size / 64.0)[..., None]
    sigma = np.maximum(flux, 0)
    sigma *= np.float32(1 / _POISSON_REF)
    sigma += 1
    np.sqrt(sigma, out=sigma)
    sigma *= sky
    sigma *= noise
    flux += sigma
    return flux


@functools.cache
def _normal_table() -> np.ndarray:
    """Standard normal quantiles at the centres of 2^16 equal-probability bins."""
    inv_cdf = statistics.NormalDist().inv_cdf
    return np.array([inv_cdf((k + 0.5) / 65536) for k in range(65536)], np.float32)


@functools.cache
def _stretch_table() -> np.ndarray:
    """uint8 asinh stretch sampled finely enough in flux that the lookup is exact to one level."""
    x = np.arange(_STRETCH_LUT) * (_STRETCH_MAX / (_STRETCH_LUT - 1))
    v = np.arcsinh(x / _STRETCH_SOFT) / math.asinh(_STRETCH_MAX / _STRETCH_SOFT)
    return np.round(np.minimum(v, 1) * 255).astype(np.uint8)


def _to_uint8(flux: np.ndarray) -> np.ndarray:
    """Asinh stretch of bands (g, r, z) in (N, 3, S, S) to RGB (z, r, g) (N, S, S, 3), like survey cutouts."""
    scale = (_RGB_SCALE * ((_STRETCH_LUT - 1) / _STRETCH_MAX))[None, :, None, None]
    x = flux[:, ::-1] * scale + np.float32(0.5)
    index = np.clip(x, 0, _STRETCH_LUT - 1, out=x).astype(np.int32)
    return _stretch_table()[index].transpose(0, 2, 3, 1)
