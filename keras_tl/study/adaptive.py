"""Adaptive seeds in a study: the paired data, the runs each round needs, and the budget.

Everything here is a pure function of the finished runs (their per-seed metric and wall time), so
a resumed study, or any shard, derives the same rounds and the same decisions as an uninterrupted
single worker. The statistics live in :mod:`keras_tl.study.sequential`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from keras_tl.errors import UserError
from keras_tl.study import sequential

_BUDGET = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(runs?|h|hours?|m|min|minutes?)\s*$", re.IGNORECASE)

RunId = Tuple[str, int]  # (arm id, seed)


@dataclasses.dataclass(frozen=True)
class Budget:
    """At most ``runs`` runs, or ``hours`` of summed run wall time, for the whole study."""

    runs: Optional[int] = None
    hours: Optional[float] = None

    def __str__(self) -> str:
        return f"{self.runs} runs" if self.runs is not None else f"{self.hours:g} h of summed run time"


def parse_budget(text: Optional[str]) -> Optional[Budget]:
    """``"40runs"``, ``"40 runs"``, ``"2.5h"``, ``"90min"`` → Budget; None or "" → None."""
    if text is None or str(text).strip() == "":
        return None
    m = _BUDGET.match(str(text))
    if not m:
        raise UserError(f"--budget {text}: expected a number of runs or hours, e.g. --budget 40runs, --budget 2.5h or --budget 90min")
    value, unit = float(m.group(1)), m.group(2).lower()
    if value <= 0:
        raise UserError(f"--budget {text}: must be more than 0")
    if unit.startswith("run"):
        if value != int(value):
            raise UserError(f"--budget {text}: a number of runs is a whole number, e.g. --budget 40runs")
        return Budget(runs=int(value))
    return Budget(hours=value if unit.startswith("h") else value / 60.0)


@dataclasses.dataclass(frozen=True)
class Pair:
    """One comparison: arm ``arm`` against its baseline ``ref``; ``name`` is the arm id."""

    name: str
    arm: str
    ref: str


def paired_diffs(pairs: Sequence[Pair], values: Mapping[str, Mapping[int, float]]) -> Dict[str, List[float]]:
    """Comparison → A − B at seeds 0, 1, 2, ... for as long as both arms have the seed.

    A gap (seed k missing while k+1 exists, e.g. a failed run) ends the sequence there: the looks
    take seeds in order, so every worker and every resume sees the same data.
    """
    out = {}
    for p in pairs:
        a, b = values.get(p.arm, {}), values.get(p.ref, {})
        d: List[float] = []
        while len(d) in a and len(d) in b:
            d.append(float(a[len(d)]) - float(b[len(d)]))
        out[p.name] = d
    return out


def _runs(pairs: Mapping[str, Pair], names, seeds: range) -> Set[RunId]:
    return {(arm, k) for n in names for arm in (pairs[n].arm, pairs[n].ref) for k in seeds}


def used(pairs: Mapping[str, Pair], tracks: Mapping[str, sequential.Track]) -> Set[RunId]:
    """(arm, seed) of every run that the looks taken so far used."""
    out: Set[RunId] = set()
    for name, tr in tracks.items():
        out |= _runs(pairs, [name], range(tr.n))
    return out


def wanted(pairs: Mapping[str, Pair], state: sequential.Replay) -> Set[RunId]:
    """(arm, seed) the next look needs: both arms of every open comparison, seeds below the look's count."""
    out: Set[RunId] = set()
    for name, n in state.seeds_wanted().items():
        out |= _runs(pairs, [name], range(n))
    return out


def budget_rule(design: sequential.Design, pairs: Mapping[str, Pair], budget: Optional[Budget],
                wall_time: Mapping[RunId, float]) -> Optional[Callable[[int, Mapping[str, sequential.Track]], bool]]:
    """``next_round_fits`` for :func:`sequential.replay`: may the study start the round after look r?

    Runs budget: the runs the looks so far used, plus the new runs the next look needs, must fit.
    Hours budget: the summed wall time of the runs used so far, plus the new runs at their mean
    wall time, must fit. Only runs the looks used count (not runs that other workers happen to
    have finished ahead), so every worker and every resume gets the same answer. The check is
    per round: a round that starts is finished, so a study can end a round's worth over the budget.
    """
    if budget is None:
        return None
    looks = design.looks

    def fits(r: int, tracks: Mapping[str, sequential.Track]) -> bool:
        spent = used(pairs, tracks)
        open_names = [k for k, tr in tracks.items() if not tr.stopped]
        new = _runs(pairs, open_names, range(looks[r + 1])) - spent
        if budget.runs is not None:
            return len(spent) + len(new) <= budget.runs
        times = [float(wall_time[x]) for x in spent]
        mean = sum(times) / len(times) if times else 0.0
        return (sum(times) + mean * len(new)) / 3600.0 <= budget.hours

    return fits


def run_range(design: sequential.Design, pairs: Sequence[Pair]) -> Tuple[int, int]:
    """Fewest and most runs the adaptive study can take (every arm of a comparison at min, at max seeds)."""
    arms = {x for p in pairs for x in (p.arm, p.ref)}
    return len(arms) * design.looks[0], len(arms) * design.max_seeds


RUNNING = "running"


def summarise(state: sequential.Replay, pairs: Mapping[str, Pair], values: Mapping[str, Mapping[int, float]], *,
              higher_is_better: bool = True, seed: int = 0, n_boot: Optional[int] = None) -> Dict[str, dict]:
    """Comparison → the report's entry: :func:`keras_tl.study.stats.compare` on the seeds the
    comparison used, with the sequential CI (the RCI at its last look), p-values and verdict.

    ``p_t`` stays the fixed-sample paired t-test of those seeds, for reference only: after
    adaptive stopping it is not a valid p-value, and the verdict never uses it.
    """
    from keras_tl.study import stats

    state.add_p_values()
    out = {}
    k_looks = len(state.design.looks)
    for name, tr in state.tracks.items():
        p = pairs[name]
        n = tr.n
        a = [values[p.arm][k] for k in range(n)]
        b = [values[p.ref][k] for k in range(n)]
        entry: Dict[str, object] = {"n": 0, "mean": None, "ci_lo": None, "ci_hi": None, "p_t": None, "seeds_needed": None}
        if n:
            entry = stats.compare(a, b, higher_is_better=higher_is_better, seed=seed,
                                  **({} if n_boot is None else {"n_boot": n_boot}))
        level = state.design.nominal_levels()[tr.look] if tr.look >= 0 else None
        entry.update(
            ci_lo=tr.ci_lo, ci_hi=tr.ci_hi,
            ci_method=(f"95% repeated confidence interval at look {tr.look + 1} of {k_looks} ({n} seeds; a paired "
                       f"t-interval at nominal confidence {1 - level:.4f})") if level is not None else "no look yet",
            p_seq=tr.p_seq, p_holm=tr.p_holm, seeds_used=n, seeds_max=state.design.max_seeds,
            verdict=tr.status if tr.stopped else RUNNING, looks=tr.history,
            seeds_needed=None,  # the adaptive study adds seeds itself, up to seeds_max
        )
        out[name] = entry
    return out
