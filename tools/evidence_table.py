"""The README's Evidence verdict table, generated from committed study.json files (so it cannot drift).

    python tools/evidence_table.py docs/evidence/lite0_imagenet docs/evidence/lite0_reset ...
    python tools/evidence_table.py --readme README.md [DIR ...]   # rewrite the README's table in place

Prints one markdown table: per comparison, the study, the arm against its baseline and what was held
fixed, finished seeds, the arm's and the baseline's mean, the paired difference with its 95% CI,
and the report's verdict (with "at chance" flags). A comparison repeated in a later study (runs carried
over, same figures) is listed once. tests/test_docs.py checks that the README holds
exactly this output between its ``evidence-table`` markers.
"""

from __future__ import annotations

import json
import os
import re
import sys

MARKERS = re.compile(r"<!-- evidence-table: (.*?) -->\n(.*?)\n<!-- /evidence-table -->", re.S)


def _pct(x, scale):
    return "—" if x is None else f"{x * scale:.1f}"


def _diff(x, scale):
    return "—" if x is None else f"{x * scale:+.1f}"


def rows(study: dict):
    scale = study.get("scale", 100.0)
    arms = {a["id"]: a for a in study["arms"]}
    for c in study["comparisons"]:
        a, b = arms[c["arm_id"]], arms[c["reference_id"]]
        ci = "n/a (1 seed)" if c["ci_lo"] is None else f"{_diff(c['ci_lo'], scale)} to {_diff(c['ci_hi'], scale)}"
        chance = [w for w, flag in (("arm", c["at_chance"]["a"]), ("baseline", c["at_chance"]["b"])) if flag]
        verdict = c["verdict"] + ("" if not chance or "chance" in c["verdict"] else f"; {' and '.join(chance)} at chance")
        row = (study["name"], f"{c['a']} vs {c['b']}" + (f" ({c['context']})" if c.get("context") else ""),
               f"{c['n']}", _pct(a["mean"], scale), _pct(b["mean"], scale), _diff(c["mean"], scale), ci, verdict)
        # the same two arms, either way round (a later study may take the other as its baseline)
        yield (frozenset((c["arm_id"], c["reference_id"])), c["n"], round(abs(c["mean"]), 9)), row


def table(study_dirs) -> str:
    """The table over ``study_dirs`` in order. A comparison that an earlier study already showed (the
    same two arm ids, which name the training recipe, either as arm or baseline, the same seeds and
    difference: runs carried over by tools/reuse_runs.py) is listed once, under the first study."""
    head = ("study", "comparison", "seeds", "arm (%)", "baseline (%)", "difference (points)", "95% CI (points)", "verdict")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    seen = set()
    for d in study_dirs:
        with open(os.path.join(d, "study.json"), encoding="utf-8") as f:
            study = json.load(f)
        done = f" ({study['runs_done']}/{study['runs_total']} runs)" if study["runs_done"] < study["runs_total"] else ""
        for key, r in rows(study):
            if key not in seen:
                seen.add(key)
                lines.append("| " + " | ".join((r[0] + done,) + r[1:]) + " |")
    return "\n".join(lines)


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
