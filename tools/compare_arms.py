"""A paired comparison a study's report does not make: any two arms of one study.json.

    python tools/compare_arms.py docs/evidence/lite0_head/study.json scratch_head-none scratch_head-units

A study compares each arm with its baseline only (``study.baseline``); this compares arm A with arm
B, each at the learning rate the study picked for it on validation, paired over the seeds both have,
with the report's own statistics (keras_tl.study.stats: bootstrap CI widened to the paired
t-interval, two-sided paired t-test; no Holm correction, as it is one comparison). Arms are named by
id or by a prefix of it that names one arm. Prints one line; exit 2 naming the arm when an id is
unknown or ambiguous.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_arm(study: dict, name: str) -> dict:
    hits = [a for a in study["arms"] if a["id"] == name] or [a for a in study["arms"] if a["id"].startswith(name)]
    if len(hits) != 1:
        ids = ", ".join(a["id"] for a in study["arms"])
        raise LookupError(f"{'no' if not hits else 'more than one'} arm matches {name!r}; the arms are: {ids}")
    return hits[0]


def compare(study: dict, a_name: str, b_name: str) -> dict:
    from keras_tl.study import report, stats

    a, b = find_arm(study, a_name), find_arm(study, b_name)
    c = {"a": a["id"], "b": b["id"], "scale": study.get("scale", 100.0),
         **report.compare_arm_summaries(a, b, study["higher_is_better"])}
    if c["n"] < 2:
        return {**c, "mean": None, "verdict": "needs 2+ paired seeds"}
    stats.finalise([c], study["higher_is_better"])
    return c


def line(c: dict) -> str:
    s = c["scale"]
    if c["mean"] is None:
        return f"{c['a']} vs {c['b']}: {c['verdict']} (paired seeds: {c['seeds']})"
    return (f"{c['a']} vs {c['b']}: {c['mean'] * s:+.1f} points (95% CI {c['ci_lo'] * s:+.1f} to {c['ci_hi'] * s:+.1f}, "
            f"{c['n']} paired seeds, p={c['p_t']:.3g}): {c['verdict']}")


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("compare_arms: usage: compare_arms.py STUDY_JSON ARM_A ARM_B", file=sys.stderr)
        return 2
    try:
        with open(args[0], encoding="utf-8") as f:
            study = json.load(f)
        print(line(compare(study, args[1], args[2])))
    except (OSError, ValueError) as e:
        print(f"compare_arms: {args[0]}: {e}; give a study.json (a study's workdir or docs/evidence/<study>/)", file=sys.stderr)
        return 2
    except LookupError as e:
        print(f"compare_arms: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
