"""Commit-sized snapshot of a (possibly still running) study: its finished runs' records and a report.

    python tools/snapshot_study.py --recipe recipes/lite0_imagenet_study.yaml \\
        --workdir runs/studies/lite0_imagenet --out docs/evidence/lite0_imagenet

Copies plan.json and, for every finished run (DONE), its small records (DONE, metrics.json,
run.json, state.json, recipe.yaml, the per-phase CSV logs and confusion matrices; never weights,
exports or logs of the child process) to ``OUT/records``, then writes the study's report from those
records alone into ``OUT`` (report.md, study.json, plots/; report.html, which embeds the same plots,
is left out: ``keras_tl.study --report_only --workdir OUT/records`` rebuilds it). The live workdir is only
read, so a running study is undisturbed. ``OUT/records`` restores a workdir for ``--resume``
elsewhere: ``cp -r OUT/records/* WORKDIR/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RECORDS = ("DONE", "metrics.json", "run.json", "state.json", "recipe.yaml")
RECORD_PREFIXES = ("log_", "confusion_")
RECORD_SUFFIXES = (".csv", ".json")


def is_record(name: str) -> bool:
    return name in RECORDS or (name.startswith(RECORD_PREFIXES) and name.endswith(RECORD_SUFFIXES))


def snapshot(plan, workdir: str, out: str) -> dict:
    """Copy the finished runs' records of ``plan`` from ``workdir`` to ``out/records``; report into ``out``."""
    from keras_tl.study import report, runner

    records = os.path.join(out, "records")
    if os.path.exists(records):
        shutil.rmtree(records)  # a snapshot replaces the last one: runs are only ever added
    os.makedirs(records)
    shutil.copy2(os.path.join(workdir, "plan.json"), os.path.join(records, "plan.json"))
    done = [r for r in plan.runs if runner.is_done(workdir, r)]
    for run in done:
        src, dst = runner.run_dir(workdir, run), runner.run_dir(records, run)
        os.makedirs(dst)
        for name in sorted(os.listdir(src)):
            if is_record(name) and os.path.isfile(os.path.join(src, name)):
                shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
    paths = report.build_report(plan, records)
    os.replace(paths["md"], os.path.join(out, "report.md"))
    os.replace(paths["json"], os.path.join(out, "study.json"))
    os.remove(paths["html"])  # the same plots again, base64-embedded; --report_only on the records rebuilds it
    if os.path.exists(os.path.join(out, "plots")):
        shutil.rmtree(os.path.join(out, "plots"))
    os.replace(os.path.join(records, "plots"), os.path.join(out, "plots"))
    return {"runs_done": len(done), "runs_total": len(plan.runs), "out": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from keras_tl import cli

    cli.setup_output()

    def _main(a):
        from keras_tl.errors import UserError
        from keras_tl.study import plan as plan_lib

        if not os.path.exists(os.path.join(a.workdir, "plan.json")):
            raise UserError(f"--workdir {a.workdir}: holds no study (no plan.json)")
        print(json.dumps(snapshot(plan_lib.load_plan(a.recipe), a.workdir, a.out)))

    return cli.run(_main, args)


if __name__ == "__main__":
    sys.exit(main())
