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
from keras_tl.study import sequential, stats

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


def run_range(design: sequential.Design, pairs: Sequence[Pair], n_arms: Optional[int] = None) -> Tuple[int, int]:
    """Fewest and most runs the adaptive study can take: every arm at min seeds; every compared arm at max.

    ``n_arms``: all arms of the plan (default: those in ``pairs``); arms in no comparison get min seeds.
    """
    arms = {x for p in pairs for x in (p.arm, p.ref)}
    n_arms = len(arms) if n_arms is None else n_arms
    return n_arms * design.looks[0], len(arms) * design.max_seeds + (n_arms - len(arms)) * design.looks[0]


RUNNING = "running"


def summarise(state: sequential.Replay, pairs: Mapping[str, Pair], values: Mapping[str, Mapping[int, float]], *,
              higher_is_better: bool = True, seed: int = 0, n_boot: Optional[int] = None) -> Dict[str, dict]:
    """Comparison → the report's entry: :func:`keras_tl.study.stats.compare` on the seeds the
    comparison used, with the sequential CI (the RCI at its last look), p-values and verdict.

    ``p_t`` stays the fixed-sample paired t-test of those seeds, for reference only: after
    adaptive stopping it is not a valid p-value, and the verdict never uses it.
    """

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


# --------------------------------------------------------------- a study's adaptive state

BUDGET_FILE = "budget.json"


def resolve_budget(workdir: str, given: Optional[Budget], log: Callable[[str], None] = print) -> Optional[Budget]:
    """The study's budget: ``given`` (recorded in ``<workdir>/budget.json``), else the one recorded there.

    Recorded so that ``--resume`` and ``--report_only`` replay the same rounds without repeating
    the flag. A different ``--budget`` replaces it (e.g. to extend a study that ran out).
    """
    import json
    import os

    from keras_tl import fs

    path = os.path.join(workdir, BUDGET_FILE)
    old = Budget(**json.loads(fs.read_text(path))) if fs.exists(path) else None
    if given is None or given == old:
        return old
    fs.write_json(path, dataclasses.asdict(given))
    if old is not None:
        log(f"study: budget changed from {old} to {given}")
    return given


def margin(plan) -> Optional[float]:
    """``study.margin`` in the metric's own units (the recipe gives points: 2 = 0.02 accuracy)."""

    m = plan.study.margin
    return None if m is None else m / stats.metric_scale(plan.study.metric)[0]


def pairs_of(plan) -> List[Pair]:
    """Every comparison of the plan: each non-baseline arm against its baseline arm."""
    out = []
    for arm in plan.arms:
        ref = plan.reference_of(arm)
        if ref is not None:
            out.append(Pair(arm.id, arm.id, ref.id))
    return out


def arm_values(plan, results: Mapping[str, dict]) -> Dict[str, Dict[int, float]]:
    """arm id → {seed: the study metric of that finished run} (test split, else validation)."""

    out: Dict[str, Dict[int, float]] = {a.id: {} for a in plan.arms}
    for run in plan.runs:
        m = results.get(run.key)
        if m is None:
            continue
        split = "test" if isinstance(m.get("test"), dict) else "val"
        v = stats.metric_value(m, plan.study.metric, split, run.key)
        if v is not None:
            out[run.arm_id][run.seed] = v
    return out


def wall_times(plan, results: Mapping[str, dict]) -> Dict[RunId, float]:
    return {(r.arm_id, r.seed): float(results[r.key].get("wall_time", 0.0)) for r in plan.runs if r.key in results}


def study_state(plan, results: Mapping[str, dict], design: sequential.Design, *, margin: Optional[float] = None,
                budget: Optional[Budget] = None) -> Tuple[sequential.Replay, Dict[str, Pair], Dict[str, Dict[int, float]]]:
    """Replay the study's looks from its finished runs: (state, comparisons by name, per-seed values)."""
    pairs = {p.name: p for p in pairs_of(plan)}
    values = arm_values(plan, results)
    rule = budget_rule(design, pairs, budget, wall_times(plan, results))
    state = sequential.replay(design, paired_diffs(list(pairs.values()), values),
                              higher_is_better=plan.study.higher_is_better, margin=margin, next_round_fits=rule)
    return state, pairs, values


def wanted_runs(plan, pairs: Mapping[str, Pair], state: sequential.Replay) -> list:
    """The plan's Run objects the next look needs, in plan order (seed-major).

    Arms in no comparison (their baseline counterpart was excluded) get the first look's seeds.
    """
    want = wanted(pairs, state)
    want |= {(a.id, k) for a in plan.arms for k in range(state.design.looks[0])}
    return [r for r in plan.runs if (r.arm_id, r.seed) in want]


# --------------------------------------------------------------- running


def run_adaptive(plan, workdir: str, *, design: sequential.Design, margin: Optional[float] = None,
                 budget: Optional[Budget] = None, run_fn=None, shard: Tuple[int, int] = (0, 1), resume: bool = False,
                 keep_going: bool = False, log: Callable[[str], None] = print, poll_seconds: float = 15.0,
                 sleep: Callable[[float], None] = None, engine=None):
    """Run an adaptive study in rounds until every comparison is settled, out of seeds or out of budget.

    Each round is derived from the finished runs alone (:func:`study_state`), so all workers
    agree on it: a worker runs its share of the round's missing runs (``--shard i/N``: every N-th
    in plan order; without shards, claim files hand them out), then waits, polling every
    ``poll_seconds``, until the other workers have finished theirs, and derives the next round.
    A run that fails leaves a hole in its arm's seeds that no later look can pass: the study
    stops there (``--resume`` retries it). ``engine`` (:mod:`keras_tl.study.engines`) runs each
    round's runs: local by default, or Ray, which runs a whole round in parallel.
    """
    import os
    import time

    from keras_tl import fs
    from keras_tl.errors import WorkdirError
    from keras_tl.study import runner

    sleep = sleep or time.sleep
    index, count = shard
    total = runner.RunnerResult()
    runner.write_plan(workdir, plan)
    # Later rounds' runs do not exist yet, so run_plan's "already started" check cannot see that this
    # shard ran earlier rounds: a marker per shard does.
    marker = os.path.join(workdir, "claims", f"adaptive-shard{index}of{count}.started")
    if not fs.create_exclusive(marker, f"{time.time()}\n") and not resume:
        raise WorkdirError(f"{workdir}: this adaptive study was already started here (shard {index}/{count}); pass --resume "
                           "to continue, or choose another --workdir")
    started = False
    waiting_since = None
    while True:
        state, pairs, _ = study_state(plan, runner.collect(plan, workdir), design, margin=margin, budget=budget)
        want = wanted_runs(plan, pairs, state)
        if state.done and all(runner.is_done(workdir, r) for r in want):
            ran = set(total.ran)
            total.skipped_done = [r.key for r in plan.runs if r.key not in ran and runner.is_done(workdir, r)]
            return total
        mine = [r for i, r in enumerate(want) if i % count == index and not runner.is_done(workdir, r)]
        if mine:
            log(f"study: round {state.round + 1}/{len(design.looks)}: {len(state.seeds_wanted())} open comparisons "
                f"need {design.looks[state.round]} seeds; {len(mine)} runs for this worker")
            res = runner.run_plan(plan, workdir, runs=mine, run_fn=run_fn, shard=shard, resume=resume or started,
                                  keep_going=keep_going, log=log, engine=engine)
            started = True
            for f in dataclasses.fields(res):
                getattr(total, f.name).extend(getattr(res, f.name))
            if res.failed:
                log(f"study: stopping after round {state.round + 1}: run {res.failed[0]} failed, and the next look "
                    "needs it; fix the cause and rerun with --resume")
                return total
            if res.ran:
                waiting_since = None
                continue
        missing = [r for r in want if not runner.is_done(workdir, r)]
        if not missing:
            continue
        if waiting_since is None:
            waiting_since = time.time()
            log(f"study: round {state.round + 1}: waiting for {len(missing)} runs of other workers "
                f"(e.g. {missing[0].key}); a worker that died must be restarted with --resume")
        sleep(poll_seconds)


def plan_lines(plan) -> List[str]:
    """What the printed plan says about adaptive seeds (empty for a fixed number of seeds)."""
    s = plan.study
    if not s.adaptive:
        return []
    design = s.design()
    least, most = run_range(design, pairs_of(plan), len(plan.arms))
    return [
        f"  adaptive seeds: looks at {', '.join(map(str, design.looks))} seeds per comparison; a comparison stops when "
        "better, worse" + (f", equivalent within {s.margin:g}" if s.margin is not None else "") + " or out of seeds",
        f"    rule: {sequential.METHOD}",
        f"    runs: at least {least} (every comparison settled at {design.looks[0]} seeds), at most {most}; the cost below is the most",
    ]
