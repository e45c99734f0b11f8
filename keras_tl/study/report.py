"""Study report: study.json (every number), report.md and a self-contained report.html.

:func:`analyze` turns the finished runs of a plan into the ``study.json`` dict;
:func:`write_report` renders it. Every figure printed in the report is formatted from
that dict, so the report and study.json cannot disagree.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from keras_tl import fs
from keras_tl import recipe as recipe_lib
from keras_tl.errors import UserError
from keras_tl.study import stats
from keras_tl.study.plan import Plan, _canon, axis_for

PLOTS = ("data_size", "freeze_depth", "training_curves", "forest")
PLOT_TITLES = {
    "data_size": "Metric vs data size",
    "freeze_depth": "Metric vs freeze depth",
    "training_curves": "Training curves (mean and 95% band over seeds)",
    "forest": "Paired differences against the baseline (95% CI)",
}


# ------------------------------------------------------------------ analysis


_scale = stats.metric_scale
_value = stats.metric_value


def _context_text(values: dict, axes: Sequence[str]) -> str:
    return ", ".join(axis_for(a).text(values[a]) for a in axes)


def _mean_sd_sum(xs: List[float]) -> Dict[str, Optional[float]]:
    if not xs:
        return {"mean": None, "total": None}
    return {"mean": float(np.mean(xs)), "total": float(np.sum(xs))}


def _compute(plan: Plan, results: Dict[str, dict]) -> Dict[str, Any]:
    """What the finished runs cost: each run's training wall time (metrics.json's ``wall_time``, its
    phases'; start-up, evaluation and export are not in it), summed over every finished run of every
    learning rate, and the median per arm. Runs carried over from another study
    (tools/reuse_runs.py) count here too."""
    by_arm: Dict[str, List[float]] = {}
    for run in plan.runs:
        if run.key in results:
            by_arm.setdefault(run.arm_id, []).append(float(results[run.key].get("wall_time") or 0.0))
    every = [t for ts in by_arm.values() for t in ts]
    return {"runs": len(every), "train_time_s": round(float(sum(every)), 1),
            "median_run_s": {a: round(float(np.median(ts)), 1) for a, ts in by_arm.items()},
            "note": "each finished run's training wall time (metrics.json wall_time: its phases, not start-up, evaluation or "
                    "export), summed over every learning rate; runs carried over from another study count here as well"}


def compare_arm_summaries(a: dict, b: dict, higher_is_better: bool = True) -> dict:
    """Arm A against arm B of a study.json (their ``seeds`` and ``per_seed``, each at its picked
    rate), paired over the seeds both have: ``seeds`` plus :func:`stats.compare`'s fields, or n 0 and
    None figures when they share no seed. No verdict yet (:func:`stats.finalise` adds it)."""
    pa, pb = dict(zip(a["seeds"], a["per_seed"])), dict(zip(b["seeds"], b["per_seed"]))
    common = sorted(set(pa) & set(pb))
    if not common:
        return {"seeds": common, "n": 0, "mean": None, "ci_lo": None, "ci_hi": None, "p_t": None, "seeds_needed": None}
    return {"seeds": common, **stats.compare([pa[k] for k in common], [pb[k] for k in common], higher_is_better=higher_is_better)}


def analyze(plan: Plan, results: Dict[str, dict], *, seed: int = 0, n_boot: int = stats.N_BOOT,
            probe: Optional[dict] = None, budget=None) -> Dict[str, Any]:
    """The study.json dict from finished runs (``results``: run key → train metrics dict)."""
    s = plan.study
    metric, hib = s.metric, s.higher_is_better
    splits = {("test" if isinstance(m.get("test"), dict) else "val") for m in results.values()}
    split = "test" if splits == {"test"} else ("val" if splits == {"val"} else "mixed")
    arms_out, per_seed = [], {}
    for arm in plan.arms:
        summary, per_seed[arm.id] = _arm_summary(plan, arm, results)
        arms_out.append(summary)
    info = None
    if s.adaptive:
        comparisons, info = _adaptive_comparisons(plan, results, per_seed, seed=seed, n_boot=n_boot, budget=budget)
    else:
        comparisons = _comparisons(plan, per_seed, seed=seed, n_boot=n_boot)
    runs_done = sum(1 for r in plan.runs if r.key in results)
    study = {
        "name": plan.name, "source": plan.source, "fingerprint": plan.fingerprint(),
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "metric": metric, "split": split, "higher_is_better": hib,
        "scale": _scale(metric)[0], "unit": _scale(metric)[1].strip(),
        # Adaptive seeds: the runs the study has needed so far (partial while a round misses runs).
        "runs_total": runs_done + info["runs_missing"] if info else len(plan.runs), "runs_done": runs_done,
        "adaptive": info,
        "seeds": s.seeds, "varied": list(plan.varied), "baseline": s.baseline,
        "lr_grid": list(s.lr_grid),
        "methods": {
            "arm_ci": ("95% interval over seeds: for proportions (accuracy, AUC, ...) the logit-scale t-interval joined with the "
                       "plain t-interval where wider, kept within 0-100% (stats.bounded_interval); a t-interval for other metrics"),
            "chance": ("accuracy only: chance = majority-class rate of the evaluation split (per-class supports in metrics.json); a seed "
                       "is at chance when its accuracy is not significantly above it (one-sided exact binomial test at 5% on the split's "
                       "size); an arm is at chance when every seed is; seeds at chance in an arm whose other seeds learned are collapsed seeds, "
                       "reported apart (learned-only mean and interval) with the cause when another learning rate of the grid did not collapse"),
            "difference_ci": f"paired by seed; 95% bootstrap CI (expanded percentile, {n_boot} resamples, seed {seed}), "
                             f"each end widened to the paired t-interval where that is wider, with >= {stats.MIN_SEEDS_BOOTSTRAP} seeds; "
                             "paired t-interval alone below that",
            "difference_bounds": "for proportions the difference CI is cut to -100..+100 points, the range a difference can take",
            "p_values": "two-sided paired t-test, Holm-corrected across all comparisons (sign-flip permutation p also listed)",
            "p_better": "share of seeds where the arm beats its baseline (ties count half), Wilson 95% interval",
            "verdict": ("better/worse when the CI excludes 0 and the Holm-adjusted p < 0.05; 'both arms at chance' when every paired "
                        "seed of both arms is at chance (the comparison then says nothing, whatever the seeds); else no evidence at this budget"),
            "seeds_needed": "smallest n whose t-interval half-width at the observed paired sd is below the observed |mean difference|",
        },
        "arms": arms_out,
        "comparisons": comparisons,
        "curves": _curves(plan, arms_out),
        "crossovers": _crossovers(plan, per_seed, seed),
        "freeze": _freeze_table(plan, arms_out),
        "probe": probe,
        "compute": _compute(plan, results),
    }
    if info:
        study["methods"].update(ADAPTIVE_METHODS)
        study["methods"]["seeds"] = (f"adaptive: looks at {', '.join(map(str, info['design']['looks']))} seeds per comparison; "
                                     "after each look, seeds are added only to the arms of comparisons still open")
        study["methods"]["stopping rule"] = info["method"] + " (details: docs/adaptive_seeds.md)"
    _annotate_chance(study)
    study["verdict"] = verdict_paragraph(study)
    return study


def _arm_summary(plan: Plan, arm, results: Dict[str, dict]) -> Tuple[dict, Dict[int, float]]:
    """One arm's study.json entry (at its picked learning rate) and its metric per seed."""
    s = plan.study
    grid: Dict[Optional[int], Dict[int, Tuple[str, dict]]] = {}  # lr index → seed → (run key, metrics)
    for run in plan.runs_of(arm.id):
        if run.key in results:
            grid.setdefault(run.lr_index, {})[run.seed] = (run.key, results[run.key])
    picked, lr_table = _pick_lr(s, grid) if s.lr_grid else (None, [])
    runs = {k: m for k, (_, m) in grid.get(picked, {}).items()}
    values = {}
    for k in sorted(runs):
        sp = "test" if isinstance(runs[k].get("test"), dict) else "val"
        v = _value(runs[k], s.metric, sp, grid[picked][k][0])
        if v is not None:
            values[k] = v
    chance = _arm_chance(plan, grid, picked, values)
    summary = _interval(s.metric, [values[k] for k in sorted(values)], chance.get("examples"))
    return {
        "id": arm.id, "label": arm.label, "values": arm.values,
        "seeds": sorted(values), "per_seed": [values[k] for k in sorted(values)],
        "mean": summary["mean"], "sd": summary["sd"], "lo": summary["lo"], "hi": summary["hi"],
        "lr_picked": s.lr_grid[picked] if picked is not None else None, "lr_selection": lr_table,
        "images_seen": _mean_sd_sum([float(runs[k].get("images_seen", 0)) for k in sorted(runs)]),
        "wall_time": _mean_sd_sum([float(runs[k].get("wall_time", 0.0)) for k in sorted(runs)]),
        "history": _history_bands(runs, s.metric),
        "phase_starts": _phase_starts(runs),
        "recipe_warning": recipe_lib.head_first_on_random_backbone(arm.recipe),
        **chance,
    }, values


def _pick_lr(s, grid) -> Tuple[Optional[int], List[dict]]:
    """The lr_grid index with the best mean validation metric, and the table it was picked from."""
    best, table = None, []
    for j, lr in enumerate(s.lr_grid):
        vals = [_value(m, s.metric, "val", key) for key, m in grid.get(j, {}).values()]
        vals = [v for v in vals if v is not None]
        mean = float(np.mean(vals)) if vals else None
        table.append({"lr": lr, "val_mean": mean, "n": len(vals)})
        if mean is not None and (best is None or (mean > best[1] if s.higher_is_better else mean < best[1])):
            best = (j, mean)
    return (best[0] if best else None), table


def _pair_entries(plan: Plan):
    """``(arm, its baseline arm, the comparison's identifying fields)`` for every arm that has a baseline."""
    base_axes = list(plan.study.baseline)
    ctx_axes = [a for a in plan.varied if a not in base_axes]
    for arm in plan.arms:
        ref = plan.reference_of(arm)
        if ref is not None:
            yield arm, ref, {"arm_id": arm.id, "reference_id": ref.id, "a": _context_text(arm.values, base_axes),
                             "b": _context_text(ref.values, base_axes), "context": _context_text(arm.values, ctx_axes),
                             "values": arm.values}


def _comparisons(plan: Plan, per_seed: Dict[str, Dict[int, float]], *, seed: int, n_boot: int) -> List[dict]:
    """Every arm against its baseline arm, paired by seed, with the verdicts."""
    hib = plan.study.higher_is_better
    comparisons = []
    for arm, ref, entry in _pair_entries(plan):
        common = sorted(set(per_seed[arm.id]) & set(per_seed[ref.id]))
        entry["seeds"] = common
        if len(common) >= 1:
            entry.update(stats.compare([per_seed[arm.id][k] for k in common], [per_seed[ref.id][k] for k in common],
                                       higher_is_better=hib, seed=seed, n_boot=n_boot))
            if _bounded(plan.study.metric) and entry["ci_lo"] is not None:
                # A difference of two proportions lies in [-1, 1]; a t end past that (2-4 seeds far
                # apart reach ±200 points) carries no information, and cutting it cannot lose coverage.
                entry.update(ci_lo=max(-1.0, entry["ci_lo"]), ci_hi=min(1.0, entry["ci_hi"]))
        else:
            entry.update({"n": 0, "mean": None, "ci_lo": None, "ci_hi": None, "p_t": None, "seeds_needed": None})
        comparisons.append(entry)
    stats.finalise(comparisons, hib)
    for c in comparisons:
        if c.get("n", 0) == 0:
            c["verdict"] = "not run yet"
    return comparisons


def _adaptive_comparisons(plan: Plan, results: Dict[str, dict], per_seed: Dict[str, Dict[int, float]], *, seed: int,
                          n_boot: int, budget) -> Tuple[List[dict], dict]:
    """Adaptive seeds: every comparison's CI, p-values and verdict from replaying the group-sequential
    looks on the finished runs (:mod:`keras_tl.study.sequential`), and the study's adaptive summary."""
    from keras_tl.study import adaptive, sequential

    s = plan.study
    design = s.design()
    pairs = {p.name: p for p in adaptive.pairs_of(plan)}
    state, _, _ = adaptive.study_state(plan, results, design, margin=adaptive.margin(plan), budget=budget)
    entries = adaptive.summarise(state, pairs, per_seed, higher_is_better=s.higher_is_better, seed=seed, n_boot=n_boot)
    missing = [r for r in adaptive.wanted_runs(plan, pairs, state) if r.key not in results]
    comparisons = []
    for arm, _, entry in _pair_entries(plan):
        e = entries[arm.id]
        comparisons.append({**entry, "seeds": list(range(e["seeds_used"])), **e})
        if e["seeds_used"] == 0:
            comparisons[-1]["verdict"] = "not run yet"
    info = {"method": sequential.METHOD, "design": design.to_json(), "margin": s.margin,
            "budget": str(budget) if budget is not None else None, "done": state.done and not missing,
            "look": state.round + 1, "looks": len(design.looks), "runs_missing": len(missing),
            "seeds_used": {k: tr.n for k, tr in state.tracks.items()}, "runs_max": len(plan.runs),
            "details": "docs/adaptive_seeds.md"}
    return comparisons, info


ADAPTIVE_METHODS = {
    "difference_ci": "paired by seed; 95% repeated confidence interval at the comparison's last look (valid whatever "
                     "made the study stop; conservative after an early stop)",
    "p_values": "sequential p-value (smallest level at which the design would have crossed at a look taken), "
                "Holm-adjusted across all comparisons; p (t) in study.json is the fixed-sample t-test of the seeds used, "
                "for reference only",
    "verdict": "better/worse when Holm's step-down over the sequential tests rejects and the repeated CI excludes 0; "
               "equivalent when the 1 - 0.05/m repeated CI lies within the margin; else undecided (out of seeds or budget)",
    "seeds_needed": "not used: the study adds seeds itself, up to the maximum",
}


def _history_bands(runs: Dict[int, dict], metric: str) -> Dict[str, List[Dict[str, Optional[float]]]]:
    out = {}
    for key in (metric, f"val_{metric}"):
        series = [m.get("history", {}).get(key) for m in runs.values()]
        series = [x for x in series if isinstance(x, list) and x]
        if not series:
            continue
        length = min(len(x) for x in series)
        out[key] = [_interval(metric, [x[e] for x in series]) for e in range(length)]
    return out


def _phase_starts(runs: Dict[int, dict]) -> List[int]:
    """Epoch numbers (1-based, in the concatenated history) where phase 2, 3, ... start, from the first seed's run.json."""
    for k in sorted(runs):
        epochs = runs[k].get("phase_epochs")
        if epochs:
            return [int(x) + 1 for x in np.cumsum(epochs)[:-1]]
    return []


def _group_key(values: dict, drop: str) -> str:
    return _canon({k: v for k, v in values.items() if k != drop})


def _curves(plan: Plan, arms_out: List[dict]) -> List[dict]:
    """Learning curves: metric vs data fraction for each combination of the other axes."""
    if "data_fraction" not in plan.varied:
        return []
    groups: Dict[str, List[dict]] = {}
    for a in arms_out:
        groups.setdefault(_group_key(a["values"], "data_fraction"), []).append(a)
    others = [x for x in plan.varied if x != "data_fraction"]
    out = []
    for members in groups.values():
        members = sorted(members, key=lambda a: a["values"]["data_fraction"])
        base = members[0]
        out.append({
            "label": _context_text(base["values"], others) or plan.name,
            "points": [{"fraction": a["values"]["data_fraction"], "images": _train_images(plan, a["id"]),
                        "mean": a["mean"], "lo": a["lo"], "hi": a["hi"], "n": len(a["seeds"])} for a in members],
        })
    return out


def _train_images(plan: Plan, arm_id: str) -> Optional[int]:
    from keras_tl.study.plan import train_images_per_epoch

    return train_images_per_epoch(plan.arm(arm_id).recipe, plan.study)


def _crossovers(plan: Plan, per_seed: Dict[str, Dict[int, float]], seed: int) -> List[dict]:
    """For each baseline pairing along the data-size axis: where the difference reaches 0."""
    if "data_fraction" not in plan.varied or "data_fraction" in plan.study.baseline:
        return []
    pairs: Dict[Tuple[str, str], List[Tuple[float, str, str]]] = {}
    for arm in plan.arms:
        ref = plan.reference_of(arm)
        if ref is None:
            continue
        key = (_group_key(arm.values, "data_fraction"), _group_key(ref.values, "data_fraction"))
        pairs.setdefault(key, []).append((arm.values["data_fraction"], arm.id, ref.id))
    base_axes = list(plan.study.baseline)
    others = [x for x in plan.varied if x not in base_axes and x != "data_fraction"]
    out = []
    for (ka, kb), pts in pairs.items():
        pts.sort()
        if len(pts) < 2:
            continue
        seeds = sorted(set.intersection(*(set(per_seed[a]) & set(per_seed[b]) for _, a, b in pts)))
        arm0 = plan.arm(pts[0][1])
        entry = {"a": _context_text(arm0.values, base_axes), "b": _context_text(plan.arm(pts[0][2]).values, base_axes),
                 "context": _context_text(arm0.values, others), "fractions": [f for f, _, _ in pts], "n_seeds": len(seeds)}
        if len(seeds) >= 2:
            diffs = np.array([[per_seed[a][k] - per_seed[b][k] for _, a, b in pts] for k in seeds])
            res = stats.crossover([f for f, _, _ in pts], diffs, seed=seed)
            entry.update({"fraction": res["size"], "fraction_lo": res["lo"], "fraction_hi": res["hi"],
                          "share_of_resamples_crossing": res["share_of_resamples_crossing"],
                          "mean_diffs": [float(x) for x in diffs.mean(axis=0)]})
            n_full = _train_images(plan, pts[-1][1])
            full = n_full / pts[-1][0] if n_full else None
            entry["images"] = round(res["size"] * full) if (full and res["size"]) else None
        out.append(entry)
    return out


def _freeze_table(plan: Plan, arms_out: List[dict]) -> List[dict]:
    if "freeze" not in plan.varied:
        return []
    order = {_canon(v): i for i, v in enumerate(plan.study.axes["freeze"])}
    others = [x for x in plan.varied if x != "freeze"]
    groups: Dict[str, List[dict]] = {}
    for a in arms_out:
        groups.setdefault(_group_key(a["values"], "freeze"), []).append(a)
    out = []
    for members in groups.values():
        members = sorted(members, key=lambda a: order[_canon(a["values"]["freeze"])])
        out.append({"label": _context_text(members[0]["values"], others) or plan.name,
                    "points": [{"freeze": a["values"]["freeze"], "mean": a["mean"], "lo": a["lo"], "hi": a["hi"]} for a in members]})
    return out


# ------------------------------------------------------------------ chance


def _bounded(metric: str) -> bool:
    return _scale(metric)[0] == 100.0


def _interval(metric: str, xs: Sequence[float], n_examples: Optional[int] = None) -> Dict[str, Optional[float]]:
    """Per-arm interval: bounded (within 0-100%) for proportions, a t-interval otherwise."""
    return stats.bounded_interval(xs, n_examples=n_examples) if _bounded(metric) else stats.t_interval(xs)


def _run_chance(m: dict, split: str) -> Tuple[Optional[float], Optional[int]]:
    """(majority-class rate, examples) of a run's evaluation split, from its per-class supports."""
    block = m.get(split)
    if not isinstance(block, dict) or not isinstance(block.get("per_class"), dict):
        return None, None
    counts = [v.get("support", 0) for v in block["per_class"].values() if isinstance(v, dict)]
    total = int(sum(counts))
    return (stats.majority_rate(counts), total) if total else (None, None)


def _seeds_at_chance(s, runs: Dict[int, Tuple[str, dict]]) -> Tuple[List[int], Optional[float], Optional[int]]:
    """Seeds whose metric is not significantly above chance, and the chance level and test size used."""
    at, rate, size = [], None, None
    for k in sorted(runs):
        key, m = runs[k]
        sp = "test" if isinstance(m.get("test"), dict) else "val"
        r, n = _run_chance(m, sp)
        v = m.get(sp, {}).get(s.metric)
        if r is None or not isinstance(v, (int, float)):
            continue
        rate, size = r, n
        if stats.at_chance(float(v), r, n):
            at.append(k)
    return at, rate, size


def _arm_chance(plan: Plan, grid: Dict[Optional[int], Dict[int, Tuple[str, dict]]], picked: Optional[int],
                values: Dict[int, float]) -> Dict[str, Any]:
    """An arm's chance fields: level, seeds at chance, status, learned-only interval, collapses per lr.

    Only for ``accuracy``: its chance level is the majority-class rate of the evaluation split (from
    the per-class supports in metrics.json). A seed is "at chance" when its accuracy is not
    significantly above that rate (one-sided exact binomial test at 5% on the split's size).
    """
    s = plan.study
    out: Dict[str, Any] = {"chance": None, "examples": None, "chance_ceiling": None, "at_chance_seeds": [],
                           "status": None, "learned": None}
    if s.metric != "accuracy":
        return out
    at, rate, size = _seeds_at_chance(s, grid.get(picked, {}))
    if rate is None:
        return out
    out.update(chance=rate, examples=size, chance_ceiling=stats.chance_ceiling(rate, size), at_chance_seeds=at)
    learned = [values[k] for k in sorted(values) if k not in at]
    if values:
        out["status"] = "at chance" if len(learned) == 0 else ("collapsed seeds" if at else "learned")
    if at and learned:
        out["learned"] = stats.bounded_interval(learned, n_examples=size)
    if s.lr_grid:
        out["lr_at_chance"] = [{"lr": lr, "n": len(grid.get(j, {})), "at_chance": len(_seeds_at_chance(s, grid.get(j, {}))[0])}
                               for j, lr in enumerate(s.lr_grid)]
    return out


def collapse_cause(arm: dict) -> Optional[str]:
    """The cause of an arm's collapsed seeds when the study shows one (another learning rate did not collapse)."""
    if not arm.get("at_chance_seeds") or arm.get("lr_picked") is None:
        return None
    fine = [x for x in arm.get("lr_at_chance", []) if x["lr"] != arm["lr_picked"] and x["n"] and not x["at_chance"]]
    if not fine:
        return None
    other = ", ".join(f"{x['lr']:g} ({x['n']} seeds)" for x in fine)
    return f"no seed of this arm collapsed at learning rate {other}, so the learning rate {arm['lr_picked']:g} is the likely cause"


def _annotate_chance(study: dict) -> None:
    """Mark comparisons whose arms sit at chance or have collapsed seeds; both at chance → its own verdict."""
    arms = {a["id"]: a for a in study["arms"]}
    for c in study["comparisons"]:
        a, b = arms[c["arm_id"]], arms[c["reference_id"]]
        seeds = set(c.get("seeds", []))
        at_a = sorted(seeds & set(a["at_chance_seeds"]))
        at_b = sorted(seeds & set(b["at_chance_seeds"]))
        full_a, full_b = bool(seeds) and len(at_a) == len(seeds), bool(seeds) and len(at_b) == len(seeds)
        c["at_chance"] = {"a": full_a, "b": full_b}
        c["collapsed"] = {"a": [] if full_a else at_a, "b": [] if full_b else at_b}
        if full_a and full_b:
            c["verdict"] = stats.BOTH_AT_CHANCE
            c["seeds_needed"] = None


def chance_sentence(study: dict) -> str:
    """The verdict's chance paragraph: the level, arms at chance, arms with collapsed seeds and their cause."""
    arms = [a for a in study["arms"] if a.get("chance") is not None and a["seeds"]]
    if not arms:
        return ""
    levels = sorted({(round(a["chance"], 4), a["examples"]) for a in arms})
    if len(levels) == 1:
        (rate, n), = levels
        text = (f" Chance (majority-class rate of the {n}-example {study['split']} split) is {rate * 100:.1f}%; "
                f"a seed counts as at chance up to {arms[0]['chance_ceiling'] * 100:.1f}% (not significantly above chance, one-sided binomial test at 5%).")
    else:
        text = " Chance (majority-class rate of each arm's evaluation split) is in the Arms table."
    flat = [a for a in arms if a["status"] == "at chance"]
    if flat:
        text += f" At chance in every seed: {', '.join(a['label'] for a in flat)}."
    for a in (a for a in arms if a["status"] in ("at chance", "collapsed seeds") and a.get("recipe_warning")):
        text += f" A likely cause for {a['label']}: {a['recipe_warning']}."
    for a in (a for a in arms if a["status"] == "collapsed seeds"):
        cause = collapse_cause(a)
        text += (f" Collapsed seeds: {a['label']} has {len(a['at_chance_seeds'])} of {len(a['seeds'])} seeds at chance "
                 f"(seed {', '.join(map(str, a['at_chance_seeds']))}) while the others learned ({fmt_val(study, a['learned']['mean'])}%)"
                 + (f"; {cause}" if cause else "") + "; an interval over such a two-mode arm is not trustworthy"
                 f" (simulated: with 20% of seeds collapsing, the 95% CI of a difference covered the truth {COLLAPSE_COVERAGE_5:.0%} of the time at 5 seeds).")
    elsewhere = [(a, x) for a in arms for x in a.get("lr_at_chance", []) if x["lr"] != a["lr_picked"] and x["at_chance"]]
    if elsewhere:
        text += (" Not picked, at chance: "
                 + "; ".join(f"{a['label']} at lr {x['lr']:g} ({x['at_chance']} of {x['n']} seeds)" for a, x in elsewhere) + ".")
    return text


# stats.collapse_coverage(n_seeds=5, n_sims=4000, n_boot=2000) → 0.670 (tests/test_study_stats.py reruns it smaller).
COLLAPSE_COVERAGE_5 = 0.67


# ------------------------------------------------------------------ words


def fmt_diff(study: dict, x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    return f"{x * study['scale']:+.1f}" if study["scale"] != 1 else f"{x:+.3g}"


def fmt_val(study: dict, x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    return f"{x * study['scale']:.1f}" if study["scale"] != 1 else f"{x:.4g}"


def comparison_clause(study: dict, c: dict) -> str:
    """One sentence about one comparison; its numbers are exactly study.json's, formatted."""
    unit = f" {study['unit']}" if study["unit"] else ""
    where = f" at {c['context']}" if c["context"] else ""
    if c.get("n", 0) == 0:
        return f"{c['a']} vs {c['b']}{where}: no paired runs finished yet."
    if c["verdict"] == stats.BOTH_AT_CHANCE:
        return (f"{c['a']} vs {c['b']}{where}: both arms at chance in all {c['n']} seeds: the budget is too small for either to "
                f"learn, so this comparison says nothing about the question, and more seeds would not change that; "
                f"train longer, on more data or at another learning rate first.")
    flags = chance_flags(c)
    ci_name = "95% repeated CI" if study.get("adaptive") else "95% CI"
    ci = f"{ci_name} {fmt_diff(study, c['ci_lo'])} to {fmt_diff(study, c['ci_hi'])}"
    pb = f"P(better)={c['p_better']:.2f}" if c.get("p_better") is not None else ""
    tail = f"({ci}, {pb}, {c['n']} seed{'s' if c['n'] != 1 else ''}{flags})"
    if study.get("adaptive") and c["verdict"] not in (stats.BETTER, stats.WORSE):
        return _adaptive_clause(study, c, where, unit, ci + flags)
    if c["verdict"] == stats.BETTER:
        return f"{c['a']} beats {c['b']}{where} by {fmt_diff(study, c['mean'])}{unit} {tail}."
    if c["verdict"] == stats.WORSE:
        return f"{c['a']} trails {c['b']}{where}: {fmt_diff(study, c['mean'])}{unit} {tail}."
    need = c.get("seeds_needed")
    if c.get("collapsed", {}).get("a") or c.get("collapsed", {}).get("b"):
        resolve = "seeds that collapsed to chance make this CI untrustworthy, and more seeds will not settle it until the collapse is fixed"
    elif c["n"] < 2:
        resolve = "one paired seed gives no interval, so no verdict is possible yet"
    elif need is None:
        resolve = "the observed difference is too small to resolve with a feasible number of seeds"
    elif need <= c["n"]:
        resolve = "the observed sd says these seeds should suffice, so the bootstrap CI or the Holm correction across comparisons holds it back; a few more seeds would settle it"
    else:
        resolve = f"~{need} seeds would resolve it"
    return (f"{c['a']} vs {c['b']}{where}: no evidence of a difference at this budget "
            f"({fmt_diff(study, c['mean'])}{unit}, {ci}, {c['n']} seed{'s' if c['n'] != 1 else ''}{flags}); {resolve}.")


def chance_flags(c: dict) -> str:
    """'; scratch at chance', '; 2 collapsed seeds in imagenet' (empty when nothing to flag)."""
    if c.get("verdict") == stats.BOTH_AT_CHANCE:
        return ""
    out = []
    for side in ("a", "b"):
        if c.get("at_chance", {}).get(side):
            out.append(f"{c[side]} at chance")
        elif c.get("collapsed", {}).get(side):
            k = len(c["collapsed"][side])
            out.append(f"{k} collapsed seed{'s' if k > 1 else ''} in {c[side]}")
    return "".join(f"; {x}" for x in out)


def _adaptive_clause(study: dict, c: dict, where: str, unit: str, ci: str) -> str:
    from keras_tl.study import adaptive, sequential

    diff = f"{fmt_diff(study, c['mean'])}{unit}"
    v = c["verdict"]
    if v == sequential.EQUIVALENT:
        return (f"{c['a']} and {c['b']}{where} are equivalent within ±{study['adaptive']['margin']:g}{unit} "
                f"({diff}, {ci}, {c['n']} seeds).")
    if v == sequential.OUT_OF_SEEDS:
        return (f"{c['a']} vs {c['b']}{where}: no evidence of a difference at the maximum of {c['n']} seeds "
                f"({diff}, {ci}); a difference this small needs a larger study.max or a less noisy setup.")
    if v == sequential.OUT_OF_BUDGET:
        return (f"{c['a']} vs {c['b']}{where}: undecided when the budget ran out at {c['n']} seeds ({diff}, {ci}); "
                "a larger --budget and --resume would add seeds.")
    if v == adaptive.RUNNING:
        return f"{c['a']} vs {c['b']}{where}: still open after {c['n']} seeds ({diff}, {ci})."
    return f"{c['a']} vs {c['b']}{where}: {v} ({diff}, {ci}, {c['n']} seeds)."


def verdict_paragraph(study: dict) -> str:
    comps = [c for c in study["comparisons"] if c.get("n", 0) > 0]
    metric = f"{study['split']} {study['metric']}"
    prefix = ""
    if study["runs_done"] < study["runs_total"]:
        prefix = f"PARTIAL RESULTS ({study['runs_done']} of {study['runs_total']} runs finished). "
    if not comps:
        return prefix + "No comparison against the baseline is possible yet: no arm has paired finished runs with its baseline." + chance_sentence(study)
    if len(comps) <= 4:
        return prefix + f"On {metric}: " + " ".join(comparison_clause(study, c) for c in comps) + crossover_sentence(study) + chance_sentence(study)
    counts = {v: sum(1 for c in comps if c["verdict"] == v) for v in (stats.BETTER, stats.WORSE, stats.NO_EVIDENCE, stats.BOTH_AT_CHANCE)}
    flat = (f" {counts[stats.BOTH_AT_CHANCE]} compare two arms that are both at chance and say nothing about the question "
            "(more seeds would not change that)." if counts[stats.BOTH_AT_CHANCE] else "")
    text = (f"On {metric}, of {len(comps)} comparisons against the baseline, {counts[stats.BETTER]} show a better arm, "
            f"{counts[stats.WORSE]} a worse arm and {counts[stats.NO_EVIDENCE]} no evidence of a difference at this budget.{flat}")
    if study.get("adaptive"):
        others = {}
        for c in comps:
            if c["verdict"] not in (stats.BETTER, stats.WORSE):
                others[c["verdict"]] = others.get(c["verdict"], 0) + 1
        text = (f"On {metric}, of {len(comps)} comparisons against the baseline (adaptive seeds), {counts[stats.BETTER]} show "
                f"a better arm, {counts[stats.WORSE]} a worse arm" + "".join(f", {n} {v}" for v, n in sorted(others.items())) + ".")
    sign = 1 if study["higher_is_better"] else -1
    picks = []
    better = [c for c in comps if c["verdict"] == stats.BETTER]
    worse = [c for c in comps if c["verdict"] == stats.WORSE]
    none_ = [c for c in comps if c["verdict"] not in (stats.BETTER, stats.WORSE)]
    if better:
        picks.append(max(better, key=lambda c: sign * c["mean"]))
    if worse:
        picks.append(min(worse, key=lambda c: sign * c["mean"]))
    if none_:
        picks.append(min(none_, key=lambda c: c["seeds_needed"] if c.get("seeds_needed") else math.inf))
    labels = ["Largest gain: ", "Largest loss: ", "Closest to resolving: "]
    kinds = [bool(better), bool(worse), bool(none_)]
    for c, label in zip(picks, [lab for lab, k in zip(labels, kinds) if k]):
        text += f" {label}{comparison_clause(study, c)}"
    return prefix + text + crossover_sentence(study) + chance_sentence(study)


def crossover_clause(x: dict) -> str:
    where = f" ({x['context']})" if x["context"] else ""
    if x.get("fraction") is None:
        return f"{x['a']} vs {x['b']}{where}: the gap does not close within the data sizes studied"
    hi = f"{x['fraction_hi'] * 100:.3g}%" if x.get("fraction_hi") else "beyond the largest size"
    images = f", ~{x['images']:,} training images" if x.get("images") else ""
    return (f"{x['a']} vs {x['b']}{where}: the gap closes at ~{x['fraction'] * 100:.3g}% of the data "
            f"(95% CI {x['fraction_lo'] * 100:.3g}% to {hi}{images})")


def crossover_sentence(study: dict) -> str:
    cross = [x for x in study["crossovers"] if x.get("n_seeds", 0) >= 2]
    if not cross:
        return ""
    shown = cross[:3]
    more = f"; {len(cross) - 3} more in the table below" if len(cross) > 3 else ""
    return " Data size: " + "; ".join(crossover_clause(x) for x in shown) + more + "."


# ------------------------------------------------------------------ plots


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _band(ax, x, pts, label):
    mean = np.array([p["mean"] if p["mean"] is not None else np.nan for p in pts], float)
    lo = np.array([p["lo"] if p["lo"] is not None else np.nan for p in pts], float)
    hi = np.array([p["hi"] if p["hi"] is not None else np.nan for p in pts], float)
    (line,) = ax.plot(x, mean, marker="o", label=label)
    ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color())


def _chance_line(ax, study: dict, arms: Optional[List[dict]] = None) -> None:
    """A dashed line at the chance level when every arm shown shares one."""
    levels = {a.get("chance") for a in (arms if arms is not None else study["arms"]) if a["seeds"]}
    if len(levels) == 1 and None not in levels:
        ax.axhline(levels.pop() * study["scale"], color="gray", ls="--", lw=1, label="chance (majority class)")


def _scaled(pts, sc):
    return [{k: (p[k] * sc if p[k] is not None else None) for k in ("mean", "lo", "hi")} for p in pts]


def make_plots(study: dict) -> Dict[str, bytes]:
    """PNG bytes for every plot this study supports (absent axes → no plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker.MaxNLocator below)

    sc = study["scale"]
    ylabel = f"{study['split']} {study['metric']}" + (" (%)" if sc == 100 else "")
    out = {}
    with plt.rc_context({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
                         "xtick.labelsize": 9, "ytick.labelsize": 9}):
        if study["curves"]:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for cv in study["curves"]:
                xs = [p["images"] or p["fraction"] for p in cv["points"]]
                _band(ax, xs, _scaled(cv["points"], sc), cv["label"])
            _chance_line(ax, study)
            ax.set_xscale("log")
            ax.set_xlabel("training images" if all(p["images"] for cv in study["curves"] for p in cv["points"]) else "data fraction")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend()
            ax.set_title("Learning curves (mean; band: 95% interval over seeds)")
            out["data_size"] = _fig_png(fig)
        if study["freeze"]:
            out["freeze_depth"] = _freeze_plot(plt, study, ylabel)
        with_hist = [a for a in study["arms"] if a["history"]]
        if with_hist:
            out["training_curves"] = _curves_plot(plt, matplotlib, study, with_hist[:48], ylabel)
        comps = [c for c in study["comparisons"] if c.get("mean") is not None]
        if comps:
            fig, ax = plt.subplots(figsize=(7, 0.45 * len(comps) + 1.2))
            colors = {stats.BETTER: "tab:green", stats.WORSE: "tab:red"}
            for i, c in enumerate(comps):
                lo = c["ci_lo"] if c["ci_lo"] is not None else c["mean"]
                hi = c["ci_hi"] if c["ci_hi"] is not None else c["mean"]
                col = colors.get(c["verdict"], "tab:gray")
                mark = "x" if c["verdict"] == stats.BOTH_AT_CHANCE else "o"
                ax.plot([lo * sc, hi * sc], [i, i], color=col, lw=2)
                ax.plot([c["mean"] * sc], [i], mark, color=col)
            ax.axvline(0, color="black", lw=0.8)
            ax.set_yticks(range(len(comps)), [f"{c['a']} vs {c['b']}" + (f" @ {c['context']}" if c["context"] else "")
                                              + (" (both at chance)" if c["verdict"] == stats.BOTH_AT_CHANCE else "") for c in comps])
            ax.invert_yaxis()
            ax.set_xlabel(f"difference in {study['split']} {study['metric']}" + (" (points)" if sc == 100 else "") + " (arm − baseline)")
            ax.grid(axis="x", alpha=0.3)
            out["forest"] = _fig_png(fig)
    return out


def _freeze_plot(plt, study: dict, ylabel: str) -> bytes:
    """Freeze depth is categorical: points with 95% error bars per arm group, offset so groups do not overlap."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = study["freeze"]
    width = 0.5 / max(1, len(groups))
    sc = study["scale"]
    for g, grp in enumerate(groups):
        pts = _scaled(grp["points"], sc)
        xs = np.arange(len(pts)) + (g - (len(groups) - 1) / 2) * width
        mean = np.array([p["mean"] if p["mean"] is not None else np.nan for p in pts], float)
        lo = np.array([p["lo"] if p["lo"] is not None else np.nan for p in pts], float)
        hi = np.array([p["hi"] if p["hi"] is not None else np.nan for p in pts], float)
        ax.errorbar(xs, mean, yerr=[mean - lo, hi - mean], fmt="o", capsize=4, ls="none",
                    label=grp["label"] if len(groups) > 1 else None)
    _chance_line(ax, study)
    names = [str(p["freeze"]) for p in groups[0]["points"]]
    ax.set_xticks(range(len(names)), names)
    ax.set_xlabel("trainable in the last phase (shallow → deep)")
    ax.set_ylabel(ylabel)
    ax.set_title("Metric vs freeze depth (mean and 95% interval over seeds)")
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _fig_png(fig)


def _curves_plot(plt, matplotlib, study: dict, shown: List[dict], ylabel: str) -> bytes:
    """Per-arm training curves (train and val metric, mean and 95% band), a dotted line where each phase starts."""
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    sc = study["scale"]
    metric = study["metric"]
    for ax, a in zip(axes.flat, shown):
        for key, band in a["history"].items():
            x = np.arange(1, len(band) + 1)
            _band(ax, x, _scaled(band, sc), "val" if key.startswith("val_") else "train")
        for i, e in enumerate(a.get("phase_starts", [])):
            ax.axvline(e - 0.5, color="black", ls=":", lw=1)
            ax.annotate(f"phase {i + 2}", (e - 0.5, 1), xycoords=("data", "axes fraction"), fontsize=8,
                        ha="left", va="top", rotation=90, color="dimgray")
        _chance_line(ax, study, [a])
        ax.set_title(a["label"])
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric}" + (" (%)" if sc == 100 else ""))
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.suptitle(f"Training curves: train and val {metric} per epoch (mean, 95% band over seeds; dotted: a phase starts)")
    fig.tight_layout()
    return _fig_png(fig)


# ------------------------------------------------------------------ rendering


def _units(study: dict) -> Tuple[str, str]:
    """(value unit, difference unit) for column heads: '%' and 'points' for proportions."""
    return ("%", "points") if study["scale"] == 100 else (study["metric"], study["metric"])


def _arm_rows(study: dict) -> Tuple[List[str], List[List[str]]]:
    vu, _ = _units(study)
    chance = any(a.get("chance") is not None for a in study["arms"])
    head = ["arm", "seeds (n)", f"{study['metric']} mean ({vu})", f"95% CI ({vu})"]
    if chance:
        head += ["chance (%)", "seeds at chance (n)", "learned seeds: mean [95% CI] (%)"]
    head += ["lr (picked on val)" if study["lr_grid"] else "lr", "images seen / run (images)", "wall time / run (s)"]
    rows = []
    for a in study["arms"]:
        row = [a["label"], str(len(a["seeds"])), fmt_val(study, a["mean"]), f"{fmt_val(study, a['lo'])} – {fmt_val(study, a['hi'])}"]
        if chance:
            at = a.get("at_chance_seeds") or []
            ln = a.get("learned")
            row += [fmt_val(study, a.get("chance")),
                    ("all" if a.get("status") == "at chance" else f"{len(at)} (seed {', '.join(map(str, at))})" if at else "0") if a["seeds"] else "n/a",
                    f"{fmt_val(study, ln['mean'])} [{fmt_val(study, ln['lo'])} – {fmt_val(study, ln['hi'])}] over {ln['n']}" if ln else "—"]
        row += [f"{a['lr_picked']:g}" if a["lr_picked"] is not None else "recipe",
                f"{a['images_seen']['mean']:,.0f}" if a["images_seen"]["mean"] is not None else "n/a",
                f"{a['wall_time']['mean']:.1f}" if a["wall_time"]["mean"] is not None else "n/a"]
        rows.append(row)
    return head, rows


def _comparison_rows(study: dict) -> Tuple[List[str], List[List[str]]]:
    if study.get("adaptive"):
        return _adaptive_rows(study)
    _, du = _units(study)
    head = ["arm", "baseline", "held fixed", "seeds (n)", f"difference ({du})", f"95% CI ({du})",
            "P(better) [95% CI] (share of seeds)", "p (t-test)", "p (Holm)", "p (sign-flip)", "verdict", "seeds to resolve (n)"]
    rows = []
    for c in study["comparisons"]:
        def p(x):
            return "n/a" if x is None else f"{x:.3g}"
        pb = "n/a" if c.get("p_better") is None else f"{c['p_better']:.2f} [{c['p_better_lo']:.2f}, {c['p_better_hi']:.2f}]"
        rows.append([c["a"], c["b"], c["context"] or "—", str(c.get("n", 0)), fmt_diff(study, c.get("mean")),
                     f"{fmt_diff(study, c.get('ci_lo'))} to {fmt_diff(study, c.get('ci_hi'))}", pb, p(c.get("p_t")),
                     p(c.get("p_holm")), p(c.get("p_sign_flip")), c["verdict"] + chance_flags(c),
                     str(c.get("seeds_needed")) if c.get("seeds_needed") else "—"])
    return head, rows


def _adaptive_rows(study: dict) -> Tuple[List[str], List[List[str]]]:
    head = ["arm", "baseline", "held fixed", "seeds used (max)", "difference (points)", "95% repeated CI (points)", "P(better) [95% CI]",
            "p (sequential)", "p (Holm)", "verdict"]
    rows = []
    for c in study["comparisons"]:
        def p(x):
            return "n/a" if x is None else f"{x:.3g}"
        pb = "n/a" if c.get("p_better") is None else f"{c['p_better']:.2f} [{c['p_better_lo']:.2f}, {c['p_better_hi']:.2f}]"
        rows.append([c["a"], c["b"], c["context"] or "—", f"{c.get('n', 0)} ({c.get('seeds_max', '?')})",
                     fmt_diff(study, c.get("mean")), f"{fmt_diff(study, c.get('ci_lo'))} to {fmt_diff(study, c.get('ci_hi'))}",
                     pb, p(c.get("p_seq")), p(c.get("p_holm")), c["verdict"]])
    return head, rows


COMPARISON_NOTE = ("held fixed: the other varied factors, equal in the arm and its baseline. difference: arm − baseline, "
                   "paired by seed. P(better): share of seeds where the arm beats its baseline. p-values are dimensionless.")


def _crossover_rows(study: dict) -> Tuple[List[str], List[List[str]]]:
    head = ["arms", "held fixed", "data fraction where the difference reaches 0 (fraction)", "95% CI (fraction)",
            "training images (images)", "resamples crossing (%)"]
    rows = []
    for x in study["crossovers"]:
        if x.get("fraction") is None:
            frac, ci = "not within the sizes studied", "—"
        else:
            frac = f"{x['fraction']:.3g}"
            ci = f"{x['fraction_lo']:.3g} – " + (f"{x['fraction_hi']:.3g}" if x.get("fraction_hi") else "beyond the largest size")
        rows.append([f"{x['a']} vs {x['b']}", x["context"] or "—", frac, ci,
                     f"{x['images']:,}" if x.get("images") else "—",
                     f"{x.get('share_of_resamples_crossing', 0):.0%}"])
    return head, rows


def _flatten(obj, prefix="") -> List[Tuple[str, str]]:
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, list) and obj and all(isinstance(x, (dict, list)) for x in obj):
        out = []
        for i, v in enumerate(obj):
            out += _flatten(v, f"{prefix}.{i}")
        return out
    text = f"{obj:.4g}" if isinstance(obj, float) else json.dumps(obj) if not isinstance(obj, str) else obj
    return [(prefix, text[:200])]


def _compute_text(compute: Optional[dict]) -> str:
    if not compute or not compute["runs"]:
        return ""
    return (f" Compute: {compute['runs']} finished runs, {compute['train_time_s'] / 3600:.1f} h of training "
            f"(each run's own training wall time, summed; median {min(compute['median_run_s'].values()) / 60:.1f} to "
            f"{max(compute['median_run_s'].values()) / 60:.1f} min per run by arm).")


def _sections(study: dict) -> List[Tuple[str, str, Any]]:
    """(kind, title, payload) in report order; kinds: para, table, plot."""
    secs: List[Tuple[str, str, Any]] = [("para", "", study["verdict"])]
    split_note = "" if study["split"] == "test" else f" (runs without a test split report {study['split']} metrics)"
    secs.append(("para", "", f"Study {study['name']} ({study['source']}), {study['runs_done']} of {study['runs_total']} runs finished, "
                             + (f"adaptive seeds ({study['adaptive']['design']['looks'][0]} to {study['seeds']} per comparison, "
                                f"looks at {', '.join(map(str, study['adaptive']['design']['looks']))}"
                                + (f", budget {study['adaptive']['budget']}" if study["adaptive"]["budget"] else "")
                                + (f", equivalence margin ±{study['adaptive']['margin']:g}" if study["adaptive"]["margin"] else "")
                                + f"; stopping rule: {study['adaptive']['method']}), "
                                if study.get("adaptive") else f"{study['seeds']} seeds per arm, ")
                             + f"varied: {', '.join(study['varied']) or 'nothing'}; baseline: "
                             + ", ".join(axis_for(k).describe(v) for k, v in study["baseline"].items())
                             + f". Metric: {study['split']} {study['metric']}{split_note}"
                             + ("; learning rate picked per arm on validation from " + ", ".join(f"{x:g}" for x in study["lr_grid"]) if study["lr_grid"] else "")
                             + "." + _compute_text(study.get("compute"))))
    secs.append(("table", "Arms", _arm_rows(study)))
    secs.append(("table", "Comparisons against the baseline", _comparison_rows(study)))
    secs.append(("para", "", COMPARISON_NOTE))
    for key in PLOTS:
        title = PLOT_TITLES[key]
        if key == "forest" and study.get("adaptive"):
            title = title.replace("(95% CI)", "(95% repeated CI)")
        secs.append(("plot", title, key))
    if study["crossovers"]:
        secs.append(("table", "Where the gap closes along data size (interpolated in log size)", _crossover_rows(study)))
    if study.get("probe") is not None:
        secs.append(("table", "Probes and CKA (probe.json)", (["key", "value"], [list(r) for r in _flatten(study["probe"])[:300]])))
    secs.append(("table", "Methods", (["what", "how"], [[k, v] for k, v in study["methods"].items()])))
    return secs


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.5}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.3em}h2{font-size:1.2em;margin-top:1.8em}
p.verdict{font-size:1.08em;background:#f4f8ff;border-left:4px solid #4a7bd0;padding:.8em 1em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0;overflow-x:auto;display:block}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}
tr:nth-child(even) td{background:#fafafa}img{max-width:100%;border:1px solid #eee}
.note{color:#777;font-style:italic}
"""


def render_html(study: dict, plots: Dict[str, bytes]) -> str:
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>Study report: {html.escape(study['name'])}</title><style>{CSS}</style></head><body>",
             f"<h1>Study report: {html.escape(study['name'])}</h1>"]
    first = True
    for kind, title, payload in _sections(study):
        if title:
            parts.append(f"<h2>{html.escape(title)}</h2>")
        if kind == "para":
            attrs = " class='verdict' id='verdict'" if first else ""
            parts.append(f"<p{attrs}>{html.escape(payload)}</p>")
            first = False
        elif kind == "table":
            head, rows = payload
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
            for r in rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>")
            parts.append("</table>")
        elif kind == "plot":
            if payload in plots:
                b64 = base64.b64encode(plots[payload]).decode()
                parts.append(f"<img id='plot-{payload}' alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>")
            else:
                parts.append(f"<p class='note'>Not applicable: {_why_no_plot(payload)}.</p>")
    parts.append(f"<p class='note'>Generated {study['generated']} · plan fingerprint {study['fingerprint']} · every number is in study.json.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _why_no_plot(key: str) -> str:
    return {"data_size": "the study does not vary data_fraction", "freeze_depth": "the study does not vary freeze",
            "training_curves": "no run recorded a per-epoch history", "forest": "no comparison has finished paired runs"}[key]


def _md_cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_md(study: dict, plots: Dict[str, bytes]) -> str:
    out = [f"# Study report: {study['name']}", ""]
    for kind, title, payload in _sections(study):
        if title:
            out += [f"## {title}", ""]
        if kind == "para":
            out += [payload, ""]
        elif kind == "table":
            head, rows = payload
            out.append("| " + " | ".join(_md_cell(h) for h in head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(_md_cell(x) for x in r) + " |" for r in rows]
            out.append("")
        elif kind == "plot":
            out += [f"![{title}](plots/{payload}.png)" if payload in plots else f"_Not applicable: {_why_no_plot(payload)}._", ""]
    out.append(f"_Generated {study['generated']} · plan fingerprint {study['fingerprint']} · every number is in study.json._")
    return "\n".join(out) + "\n"


def write_report(study: dict, out_dir: str) -> Dict[str, str]:
    """Write study.json, report.md (+ plots/*.png) and report.html into ``out_dir``; returns their paths."""
    plots = make_plots(study)
    fs.makedirs(out_dir)
    fs.makedirs(os.path.join(out_dir, "plots"))
    for key, png in plots.items():
        fs.write_bytes(os.path.join(out_dir, "plots", f"{key}.png"), png)
    paths = {"json": os.path.join(out_dir, "study.json"), "md": os.path.join(out_dir, "report.md"),
             "html": os.path.join(out_dir, "report.html")}
    fs.write_text(paths["json"], json.dumps(study, indent=2) + "\n")
    fs.write_text(paths["md"], render_md(study, plots))
    fs.write_text(paths["html"], render_html(study, plots))
    return paths


def load_probe(workdir: str) -> Optional[dict]:
    path = os.path.join(workdir, "probe.json")
    if not fs.exists(path):
        return None
    try:
        return json.loads(fs.read_text(path))
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); regenerate it with keras_tl.probe or delete it") from None


def _add_phase_epochs(plan: Plan, workdir: str, results: Dict[str, dict]) -> None:
    """Give each result its phases' epoch counts from run.json (the training-curve plot marks where phases start)."""
    from keras_tl.study.runner import run_dir

    for run in plan.runs:
        if run.key not in results:
            continue
        path = os.path.join(run_dir(workdir, run), "run.json")
        try:
            phases = json.loads(fs.read_text(path)).get("phases", []) if fs.exists(path) else []
        except ValueError:
            phases = []  # run.json is informative here; metrics.json is what the report needs
        epochs = [p.get("epochs_run") for p in phases if isinstance(p, dict)]
        if epochs and all(isinstance(e, int) for e in epochs):
            results[run.key] = dict(results[run.key], phase_epochs=epochs)


def build_report(plan: Plan, workdir: str, *, seed: int = 0) -> Dict[str, str]:
    """Collect finished runs from ``workdir`` and write the report there."""
    from keras_tl.study.runner import collect

    budget = None
    if plan.study.adaptive:
        from keras_tl.study import adaptive

        budget = adaptive.resolve_budget(workdir, None)
    results = collect(plan, workdir)
    _add_phase_epochs(plan, workdir, results)
    study = analyze(plan, results, seed=seed, probe=load_probe(workdir), budget=budget)
    return write_report(study, workdir)
