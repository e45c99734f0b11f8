"""Adaptive seeds: a group-sequential paired t-test that may look after every round of seeds.

Method (one per study, named in the report as :data:`METHOD`):

* **Looks.** Each comparison (arm A against its baseline B, paired by seed) is analysed after
  ``n_1 < n_2 < ... < n_K`` seeds (:func:`schedule`: ``min`` seeds, then rounds up to ``max``).
* **Alpha spending.** The two-sided level α = 0.05 is spent over the information fractions
  ``n_k / n_K`` with the Lan–DeMets O'Brien–Fleming-type function, α/2 per side
  (Lan & DeMets 1983, Biometrika 70:659–663; the form of gsDesign's ``sfLDOF``; Jennison &
  Turnbull 2000, *Group Sequential Methods with Applications to Clinical Trials*, ch. 7). It
  spends almost nothing at the first looks, so the last look keeps nearly the fixed-sample power
  (at 4 looks over 3–12 seeds the final critical z is 2.014 instead of 1.960).
* **Unknown variance, few seeds.** The usual conversion of normal boundaries to t boundaries
  "at the same nominal level" inflates the false-claim rate with 2–11 degrees of freedom
  (measured on 400,000 null paths: 0.053 instead of 0.050 at looks 3/6/9/12). The
  boundaries here are the exact ones *for the paired t statistic*: its null distribution does
  not depend on the unknown sd, so the first look's boundary is a t quantile and each later
  look's is the conditional quantile of ``|t_k|`` among 2^18 simulated null paths that had not
  crossed, chosen so each look crosses with exactly the α spent there. The paths come from a
  fixed generator seed, so the boundaries (and every decision) are deterministic.
* **Decisions** use repeated confidence intervals (RCIs; Jennison & Turnbull 1989, JRSS B
  51:305–361; 2000, ch. 9): at look k, ``mean ± c_k · sd/√n_k``. Together they cover the true
  difference at every look with probability 0.95, so any stopping rule keeps the guarantee:
  also stopping for equivalence, for the budget, or because another comparison settled.

  - *better / worse*: the 95% RCI excludes 0 and the Holm-adjusted sequential p < 0.05
    (the same rule as :func:`keras_tl.study.stats.verdict`, which is called);
  - *equivalent within the margin*: the RCI at level 1 − α/m (m comparisons) lies inside
    ``(-margin, +margin)``, a TOST on the RCI (Jennison & Turnbull 2000, ch. 6 and 9); each such claim
    has error ≤ α/(2m), so ≤ α/2 for all of them together;
  - *undecided (out of seeds)* after the look at ``max`` seeds; *undecided (out of budget)*
    when the budget ended the study before the next round.
* **Several comparisons.** Each comparison's sequential p-value is the smallest α' at which the
  same design at level α' would have crossed at one of the looks taken. Holm's step-down over
  these p-values (:func:`keras_tl.study.stats.holm`) is the graphical group-sequential procedure
  of Maurer & Bretz 2013 (Stat Biopharm Res 5:311–320) with Holm's weights: familywise error
  ≤ α for better/worse claims, whatever the correlation between comparisons (they share the
  baseline arm). Sequential p-values only fall as looks are added, so a comparison resolved at
  one round stays resolved; a stopped comparison keeps its p-value and its verdict can only
  improve when another one settles.
* **CIs reported** are the RCIs at each comparison's last look. They are valid whatever made the
  study stop, and therefore conservative after an early stop (calibration: tools/calibration.py).
* **Zero spread** (every seed differs by the same amount, common with small test sets): t is
  undefined, and that look decides nothing (see :func:`keras_tl.study.stats.paired_t_pvalue`).

Replaying the looks from the per-seed results alone (:func:`replay`) is what makes a resumed or
sharded study decide what an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats as st

from keras_tl.errors import UserError
from keras_tl.study import stats

METHOD = ("group-sequential paired t-test: Lan-DeMets O'Brien-Fleming-type alpha spending (Lan & DeMets 1983), "
          "exact t boundaries, repeated confidence intervals (Jennison & Turnbull 1989, 2000 ch. 9), "
          "Holm over sequential p-values (Maurer & Bretz 2013)")
ALPHA = round(1 - stats.CONF, 12)
N_PATHS = 1 << 18
PATH_SEED = 20_231_201
P_MIN = 1e-4  # the simulated boundaries resolve p-values down to about 25 paths in 2^18
DEFAULT_LOOKS = 4

BETTER, WORSE = stats.BETTER, stats.WORSE
EQUIVALENT = "equivalent within the margin"
OUT_OF_SEEDS = "undecided (out of seeds)"
OUT_OF_BUDGET = "undecided (out of budget)"
CONTINUE = "continue"
WAITING = "waiting for runs"
OUTCOMES = (BETTER, WORSE, EQUIVALENT, OUT_OF_SEEDS, OUT_OF_BUDGET)


def schedule(min_seeds: int, max_seeds: int, step: Optional[int] = None, where: str = "study.seeds") -> Tuple[int, ...]:
    """Seeds per comparison at each look: ``min``, then rounds of ``step`` up to ``max`` (always a look).

    Without ``step``, four looks evenly spaced from ``min`` to ``max`` (fewer when the range is short).
    """
    for key, v in (("min", min_seeds), ("max", max_seeds)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise UserError(f"{where}.{key}: expected an integer, got {v!r}")
    if min_seeds < 3:
        raise UserError(f"{where}.min: {min_seeds} is too few for a paired t-test that may stop early; use min >= 3")
    if max_seeds < min_seeds:
        raise UserError(f"{where}.max: {max_seeds} is below min {min_seeds}; use max >= min")
    if step is None:
        k = min(DEFAULT_LOOKS, max_seeds - min_seeds + 1)
        if k == 1:
            return (min_seeds,)
        return tuple(sorted({int(round(min_seeds + (max_seeds - min_seeds) * i / (k - 1))) for i in range(k)}))
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise UserError(f"{where}.step: expected a positive integer, got {step!r}")
    looks = list(range(min_seeds, max_seeds, step)) + [max_seeds]
    return tuple(looks)


def spent(alpha: float, fraction) -> np.ndarray:
    """Two-sided α spent by information fraction t: Lan–DeMets O'Brien–Fleming type, α/2 per side."""
    t = np.asarray(fraction, dtype=float)
    with np.errstate(divide="ignore"):
        return 2 * (2 - 2 * st.norm.cdf(st.norm.ppf(1 - alpha / 4) / np.sqrt(t)))


@functools.lru_cache(maxsize=8)
def _null_paths(looks: Tuple[int, ...]) -> np.ndarray:
    """|t| at every look for N_PATHS simulated null paths of paired differences (float32, shape (N_PATHS, K))."""
    rng = np.random.default_rng(PATH_SEED)
    out = np.empty((N_PATHS, len(looks)), dtype=np.float32)
    s = np.zeros(N_PATHS)
    s2 = np.zeros(N_PATHS)
    done = 0
    for k, n in enumerate(looks):
        z = rng.standard_normal((N_PATHS, n - done))
        s += z.sum(axis=1)
        s2 += (z * z).sum(axis=1)
        done = n
        mean = s / n
        var = np.maximum(s2 - n * mean * mean, 1e-300) / (n - 1)
        out[:, k] = np.abs(mean) * math.sqrt(n) / np.sqrt(var)
    return out


def boundaries_from_paths(abs_stats: np.ndarray, increments: Sequence[float], first: float) -> np.ndarray:
    """Critical values for |statistic| per look: look 1 given, each later one the conditional quantile.

    ``abs_stats``: (paths, K) null |statistic| values; ``increments``: α to spend at each look.
    A path crosses at look k when it has not crossed before and ``|stat| > c_k``; c_k is set so
    that at most ``increments[k]`` of all paths cross there.
    """
    n_paths, k_looks = abs_stats.shape
    c = np.empty(k_looks)
    c[0] = first
    alive = abs_stats[:, 0] <= first
    for k in range(1, k_looks):
        x = abs_stats[alive, k]
        cnt = int(math.floor(increments[k] * n_paths + 1e-9))
        if x.size == 0:
            c[k] = np.inf
            continue
        if cnt >= x.size:
            c[k] = 0.0
        else:
            # The (cnt+1)-th largest value: exactly cnt alive paths lie strictly above it.
            c[k] = float(np.partition(x, x.size - cnt - 1)[x.size - cnt - 1])
        alive &= abs_stats[:, k] <= c[k]
    return c


@dataclasses.dataclass(frozen=True)
class Design:
    """A group-sequential design for paired differences: the looks and the two-sided level."""

    looks: Tuple[int, ...]
    alpha: float = ALPHA

    def __post_init__(self):
        if len(self.looks) < 1 or any(b <= a for a, b in zip(self.looks, self.looks[1:])) or self.looks[0] < 3:
            raise ValueError(f"looks must increase from at least 3 seeds, got {self.looks}")

    @property
    def max_seeds(self) -> int:
        return self.looks[-1]

    def critical(self, alpha: Optional[float] = None) -> Tuple[float, ...]:
        """Critical |t| per look for a design of level ``alpha`` (default: the design's)."""
        return _critical(self.looks, self.alpha if alpha is None else float(alpha))

    def nominal_levels(self, alpha: Optional[float] = None) -> Tuple[float, ...]:
        """Two-sided fixed-sample level of each look's boundary (what a t-test at that look would need)."""
        return _nominal(self.looks, self.alpha if alpha is None else float(alpha))

    def to_json(self) -> dict:
        return {"method": METHOD, "looks": list(self.looks), "alpha": self.alpha,
                "spent": [float(x) for x in spent(self.alpha, np.asarray(self.looks) / self.max_seeds)],
                "critical_t": [float(x) for x in self.critical()],
                "nominal_levels": list(self.nominal_levels()),
                "paths": N_PATHS, "path_seed": PATH_SEED}


@functools.lru_cache(maxsize=256)
def _critical(looks: Tuple[int, ...], alpha: float) -> Tuple[float, ...]:
    cum = spent(alpha, np.asarray(looks, float) / looks[-1])
    inc = np.diff(np.concatenate([[0.0], cum]))
    first = float(st.t.isf(inc[0] / 2, looks[0] - 1)) if inc[0] > 0 else math.inf
    if len(looks) == 1:
        return (first,)
    return tuple(float(x) for x in boundaries_from_paths(_null_paths(looks), inc, first))


@functools.lru_cache(maxsize=256)
def _nominal(looks: Tuple[int, ...], alpha: float) -> Tuple[float, ...]:
    return tuple(float(2 * st.t.sf(c, n - 1)) for c, n in zip(_critical(looks, alpha), looks))


def t_stat(d: Sequence[float]) -> Optional[float]:
    """Paired t statistic of ``d`` (None with < 2 values or zero spread, where t is undefined)."""
    d = np.asarray(d, dtype=float)
    if d.size < 2 or np.allclose(d, d[0], rtol=1e-9, atol=1e-12):
        return None
    return float(d.mean() / (d.std(ddof=1) / math.sqrt(d.size)))


def crosses(design: Design, t_values: Sequence[Optional[float]], alpha: float, *, cached: bool = True) -> bool:
    """Whether the design at level ``alpha`` crosses at one of the looks taken (``t_values``: t at looks 1..k)."""
    crit = _critical(design.looks, alpha) if cached else _critical.__wrapped__(design.looks, alpha)
    return any(t is not None and math.isfinite(t) and abs(t) > c for t, c in zip(t_values, crit))


def sequential_p(design: Design, t_values: Sequence[Optional[float]], *, rel_tol: float = 0.01) -> float:
    """Smallest α' at which the design at level α' crosses at one of the looks taken, in [P_MIN, 1].

    Found by bisection on log α' to ``rel_tol`` (each step recomputes the boundaries: ~0.03 s);
    reported, never used for decisions, which test the boundaries directly (:func:`crosses`).
    """
    if not crosses(design, t_values, 1.0, cached=False):
        return 1.0
    if crosses(design, t_values, P_MIN, cached=False):
        return P_MIN
    lo, hi = math.log(P_MIN), 0.0  # crosses at exp(hi), not at exp(lo)
    while hi - lo > rel_tol:
        mid = 0.5 * (lo + hi)
        if crosses(design, t_values, math.exp(mid), cached=False):
            hi = mid
        else:
            lo = mid
    return float(math.exp(hi))


def rci(design: Design, d: Sequence[float], look: int, alpha: Optional[float] = None) -> Dict[str, Optional[float]]:
    """Repeated CI at ``look`` (0-based) from the first ``design.looks[look]`` differences.

    A paired t-interval (:func:`keras_tl.study.stats.t_interval`) at the look's nominal level;
    lo/hi None when the spread is zero.
    """
    n = design.looks[look]
    x = np.asarray(d, dtype=float)[:n]
    level = design.nominal_levels(alpha)[look]
    out = stats.t_interval(x, conf=1 - level)
    if t_stat(x) is None:
        out.update(lo=None, hi=None)
    out["conf_nominal"] = 1 - level
    return out


@dataclasses.dataclass
class Track:
    """One comparison's state after replaying its looks."""

    name: str
    status: str = CONTINUE  # CONTINUE, WAITING, or one of OUTCOMES
    look: int = -1  # last look taken (0-based); -1 before the first
    n: int = 0  # seeds used by the last look
    t_values: List[Optional[float]] = dataclasses.field(default_factory=list)
    holm_rejected: bool = False  # rejected by Holm's step-down over the sequential tests so far
    mean: Optional[float] = None
    sd: Optional[float] = None
    ci_lo: Optional[float] = None  # the 95% RCI at the last look
    ci_hi: Optional[float] = None
    eq_lo: Optional[float] = None  # the 1 - alpha/m RCI used for equivalence
    eq_hi: Optional[float] = None
    p_seq: Optional[float] = None  # filled by Replay.add_p_values (reporting only)
    p_holm: Optional[float] = None
    history: List[dict] = dataclasses.field(default_factory=list)

    @property
    def stopped(self) -> bool:
        return self.status in OUTCOMES

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["seeds_used"] = d.pop("n")
        return d


@dataclasses.dataclass
class Replay:
    """Where the adaptive study stands: every comparison's track, and what to run next."""

    design: Design
    tracks: Dict[str, Track]
    round: int  # index of the look the study is at (the next one to complete)
    done: bool

    def seeds_wanted(self) -> Dict[str, int]:
        """Comparison → seeds it needs for its next look (only comparisons still open)."""
        if self.done:
            return {}
        n = self.design.looks[self.round]
        return {k: n for k, tr in self.tracks.items() if not tr.stopped}

    def add_p_values(self) -> None:
        """Sequential p-values and their Holm adjustment (:func:`keras_tl.study.stats.holm`), for the report."""
        names = list(self.tracks)
        for k in names:
            self.tracks[k].p_seq = sequential_p(self.design, self.tracks[k].t_values)
        for k, p in zip(names, stats.holm([self.tracks[k].p_seq for k in names])):
            self.tracks[k].p_holm = p

    def to_json(self) -> dict:
        return {"design": self.design.to_json(), "round": self.round, "done": self.done,
                "comparisons": {k: tr.to_json() for k, tr in self.tracks.items()}}


def replay(design: Design, diffs: Mapping[str, Sequence[float]], *, higher_is_better: bool = True,
           margin: Optional[float] = None,
           next_round_fits: Optional[Callable[[int, Mapping[str, "Track"]], bool]] = None) -> Replay:
    """Replay the looks in order from the per-seed paired differences alone; deterministic.

    ``diffs``: comparison → differences A − B in seed order. It may hold fewer seeds than the
    next look needs (the replay stops there, those comparisons WAITING) or more (seeds beyond a
    comparison's stopping look are ignored). ``next_round_fits(r, tracks)``: called after look r
    (0-based) while some comparison is still open (``not track.stopped``); False ends those out of
    budget. It must be a pure function of the finished runs for the replay to stay deterministic
    (None: no budget).
    ``margin``: equivalence margin in the units of the differences (None: no equivalence claims).
    """
    if margin is not None and not margin > 0:
        raise UserError(f"study.margin: {margin!r} must be a positive number of metric points")
    tracks = {k: Track(k) for k in diffs}
    m = len(tracks)
    looks = design.looks
    r = 0
    while r < len(looks):
        n = looks[r]
        active = [tr for tr in tracks.values() if not tr.stopped]
        if not active:
            break
        waiting = [tr for tr in active if len(diffs[tr.name]) < n]
        if waiting:
            for tr in waiting:
                tr.status = WAITING
            return Replay(design, tracks, r, False)
        for tr in active:
            x = np.asarray(diffs[tr.name], dtype=float)[:n]
            ci = rci(design, x, r)
            eq = rci(design, x, r, alpha=design.alpha / m) if margin is not None else {"lo": None, "hi": None}
            tr.look, tr.n = r, n
            tr.t_values.append(t_stat(x))
            tr.mean, tr.sd, tr.ci_lo, tr.ci_hi, tr.eq_lo, tr.eq_hi = ci["mean"], ci["sd"], ci["lo"], ci["hi"], eq["lo"], eq["hi"]
            tr.history.append({"look": r, "seeds": n, "mean": ci["mean"], "sd": ci["sd"], "t": tr.t_values[-1],
                               "ci_lo": ci["lo"], "ci_hi": ci["hi"]})
        _holm_step_down(design, tracks)
        last = r == len(looks) - 1
        for tr in active:
            v = _difference_verdict(tr, higher_is_better)
            if v is not None:
                tr.status = v
            elif margin is not None and tr.eq_lo is not None and -margin < tr.eq_lo and tr.eq_hi < margin:
                tr.status = EQUIVALENT
            elif last:
                tr.status = OUT_OF_SEEDS
        still_open = [tr for tr in active if not tr.stopped]
        if still_open and not last and next_round_fits is not None and not next_round_fits(r, tracks):
            for tr in still_open:
                tr.status = OUT_OF_BUDGET
        r += 1
    for tr in tracks.values():  # a stopped comparison's verdict can still improve when others settle
        if tr.stopped and tr.status not in (BETTER, WORSE):
            tr.status = _difference_verdict(tr, higher_is_better) or tr.status
    return Replay(design, tracks, min(r, len(looks) - 1), True)


def _holm_step_down(design: Design, tracks: Mapping[str, Track]) -> None:
    """Holm over the sequential tests, exactly: with R open hypotheses, reject those crossing at level α/|R|."""
    remaining = list(tracks.values())  # every comparison of the study counts in m, data or not
    for tr in remaining:
        tr.holm_rejected = False
    while remaining:
        level = design.alpha / len(remaining)
        hit = [tr for tr in remaining if crosses(design, tr.t_values, level)]
        if not hit:
            return
        for tr in hit:
            tr.holm_rejected = True
        remaining = [tr for tr in remaining if not tr.holm_rejected]


def _difference_verdict(tr: Track, higher_is_better: bool) -> Optional[str]:
    """BETTER/WORSE when Holm rejects and the 95% RCI at the last look excludes 0 (as stats.verdict); else None."""
    if not tr.holm_rejected or tr.ci_lo is None or tr.ci_hi is None:
        return None
    if tr.ci_lo > 0:
        return BETTER if higher_is_better else WORSE
    if tr.ci_hi < 0:
        return WORSE if higher_is_better else BETTER
    return None
