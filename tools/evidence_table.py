"""The README's Evidence verdict table, generated from committed study.json files (so it cannot drift).

    python tools/evidence_table.py docs/evidence/lite0_imagenet docs/evidence/lite0_reset ...
    python tools/evidence_table.py --readme README.md [DIR ...]   # rewrite the README's table in place

Prints one markdown table: per comparison, the study, the arm against its baseline and what was held
fixed, finished seeds, the arm's and the baseline's mean, the paired difference with its 95% CI,
and the report's verdict with its flags (an arm at chance, collapsed seeds). A comparison repeated in a later study (runs carried
over by tools/reuse_runs.py) is listed once: under the first study when the seeds are the same, and
replaced by the later study's row, in the first one's place, when the later study carried those runs
over and added seeds. tests/test_docs.py checks that the README holds exactly this output between its
``evidence-table`` markers.
"""

from __future__ import annotations

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_tl.study.report import chance_flags  # noqa: E402  (no TensorFlow)

MARKERS = re.compile(r"<!-- evidence-table: (.*?) -->\n(.*?)\n<!-- /evidence-table -->", re.S)


def _pct(x, scale):
    return "—" if x is None else f"{x * scale:.1f}"


def _diff(x, scale):
    return "—" if x is None else f"{x * scale:+.1f}"


def _digest(arm_id: str) -> str:
    """The part of an arm id that names its training recipe's overrides (plan._make_arm): the labels
    before it differ between studies that vary different axes."""
    return arm_id.rsplit("-", 1)[-1]


def rows(study: dict):
    """(key, per-seed differences, row) per comparison. The key is the two arms' override digests,
    oriented (arm, baseline); the differences are {seed: arm - baseline}."""
    scale = study.get("scale", 100.0)
    arms = {a["id"]: a for a in study["arms"]}
    for c in study["comparisons"]:
        a, b = arms[c["arm_id"]], arms[c["reference_id"]]
        ci = "n/a (1 seed)" if c["ci_lo"] is None else f"{_diff(c['ci_lo'], scale)} to {_diff(c['ci_hi'], scale)}"
        verdict = c["verdict"] + chance_flags(c)  # the report's own flags: at chance, collapsed seeds
        done = f" ({study['runs_done']}/{study['runs_total']} runs)" if study["runs_done"] < study["runs_total"] else ""
        row = (study["name"] + done, f"{c['a']} vs {c['b']}" + (f" ({c['context']})" if c.get("context") else ""),
               f"{c['n']}", _pct(a["mean"], scale), _pct(b["mean"], scale), _diff(c["mean"], scale), ci, verdict)
        yield (_digest(c["arm_id"]), _digest(c["reference_id"])), dict(zip(c["seeds"], c["diffs"])), row


def _same_runs(earlier: dict, later: dict, flip: bool) -> bool:
    """True when ``later`` holds every seed of ``earlier`` with the same paired difference (sign-flipped
    when the later study took the other arm as baseline): the same runs, carried over."""
    sign = -1.0 if flip else 1.0
    return all(seed in later and abs(sign * later[seed] - d) < 1e-9 for seed, d in earlier.items())


def table(study_dirs) -> str:
    """The table over ``study_dirs`` in order. A comparison that an earlier study already showed (the
    same two arms' training overrides, either as arm or baseline, and the same paired difference on
    every seed the earlier one had: runs carried over by tools/reuse_runs.py) is listed once: under the
    earlier study when the seeds are the same; when the later study added seeds, its row replaces the
    earlier one in place."""
    head = ("study", "comparison", "seeds", "arm (%)", "baseline (%)", "difference (points)", "95% CI (points)", "verdict")
    listed = []  # [key, diffs, row]
    for d in study_dirs:
        with open(os.path.join(d, "study.json"), encoding="utf-8") as f:
            study = json.load(f)
        for key, diffs, r in rows(study):
            for entry in listed:
                flip = entry[0] == key[::-1] and key[0] != key[1]
                if (entry[0] == key or flip) and _same_runs(entry[1], diffs, flip):
                    if len(diffs) > len(entry[1]):
                        entry[:] = [key, diffs, r]
                    break
            else:
                listed.append([key, diffs, r])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for _, _, r in listed])


def update_readme(path: str, study_dirs=()) -> None:
    """Replace the table between ``path``'s evidence-table markers with :func:`table`'s output, for
    ``study_dirs`` or, when none are given, the directories the marker names (paths relative to the
    README's folder). Written to a temporary file and renamed over the README."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    m = MARKERS.search(text)
    if not m:
        print(f"evidence_table: {path} has no <!-- evidence-table: DIR ... --> block; add one where the table goes",
              file=sys.stderr)
        sys.exit(2)
    dirs = list(study_dirs) or m.group(1).split()
    root = os.path.dirname(os.path.abspath(path))
    new = table([os.path.join(root, d) for d in dirs])
    text = text[:m.start()] + f"<!-- evidence-table: {' '.join(dirs)} -->\n{new}\n<!-- /evidence-table -->" + text[m.end():]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--readme"]:
        if len(args) < 2:
            print("evidence_table: --readme needs the README's path, e.g. --readme README.md", file=sys.stderr)
            sys.exit(2)
        update_readme(args[1], args[2:])
    else:
        print(table(args))
