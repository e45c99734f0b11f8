"""What the committed evidence cost: run time summed from committed run records, each run counted once.

    python tools/evidence_cost.py docs/evidence/lite0_reset docs/evidence/lite0_freeze ...

Reads every ``run.json`` below each directory (a study snapshot's ``records/runs/...`` or single
runs) and prints one markdown table: per directory, its finished runs, how many of them are new
(not already counted in a directory listed before it), and the summed wall time of the new ones,
both the whole process (``this_process``: start-up, training, evaluation, export) and training
alone; then the total. A run carried over into another study by tools/reuse_runs.py is a hard link
to the same run.json, so its bytes are identical: it is counted once, in the first directory that
holds it. A run resumed after a kill counts its last process only (run.json's own figure).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Dict, List, Tuple


def run_records(root: str) -> List[Tuple[str, dict]]:
    """(sha256 of the bytes, parsed run.json) for every run.json below ``root``, sorted by path."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if "run.json" in filenames:
            with open(os.path.join(dirpath, "run.json"), "rb") as f:
                raw = f.read()
            out.append((hashlib.sha256(raw).hexdigest(), json.loads(raw)))
    return out


def cost(dirs: List[str]) -> List[Dict]:
    seen = set()
    rows = []
    for d in dirs:
        runs = run_records(d)
        new = [(h, r) for h, r in runs if h not in seen]
        seen.update(h for h, _ in runs)
        wall = [r.get("wall_time_s") or {} for _, r in new]
        rows.append({"dir": d, "runs": len(runs), "new": len(new),
                     "process_h": sum(float(w.get("this_process", 0.0)) for w in wall) / 3600,
                     "training_h": sum(float(w.get("training", 0.0)) for w in wall) / 3600})
    return rows


def table(dirs: List[str]) -> str:
    rows = cost(dirs)
    lines = ["| evidence | finished runs | counted here (new) | run time, whole process (h) | training (h) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dir']} | {r['runs']} | {r['new']} | {r['process_h']:.2f} | {r['training_h']:.2f} |")
    lines.append(f"| total | {sum(r['runs'] for r in rows)} | {sum(r['new'] for r in rows)} | "
                 f"{sum(r['process_h'] for r in rows):.2f} | {sum(r['training_h'] for r in rows):.2f} |")
    return "\n".join(lines)


def _fail(msg: str) -> None:
    print(f"evidence_cost: {msg}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    if not sys.argv[1:]:
        _fail("give one or more evidence directories, e.g. docs/evidence/lite0_reset")
    missing = [d for d in sys.argv[1:] if not os.path.isdir(d)]
    if missing:
        _fail(f"not a directory: {missing[0]}; give a study snapshot such as docs/evidence/lite0_reset")
    print(table(sys.argv[1:]))
