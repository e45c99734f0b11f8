"""Commit-sized snapshot of a (possibly still running) study: its finished runs' records and a report.

    python tools/snapshot_study.py --recipe recipes/lite0_imagenet_study.yaml \\
        --workdir runs/studies/lite0_imagenet --out docs/evidence/lite0_imagenet

Copies plan.json (and budget.json, probe.json when present) and, for every finished run (DONE), its small records (DONE, metrics.json,
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


WORKDIR_FILES = ("plan.json", "budget.json", "probe.json")  # what the report reads besides the runs


def snapshot(plan, workdir: str, out: str) -> dict:
    """Copy the finished runs' records of ``plan`` from ``workdir`` to ``out/records``; report into ``out``.

    Refuses a workdir that holds another plan (WorkdirError) or none (UserError). Everything is
    built in a temporary directory beside ``out`` and swapped in at the end, so a failure leaves the
    previous snapshot as it was.
    """
    from keras_tl.errors import UserError
    from keras_tl.study import report, runner

    if not runner.check_plan(workdir, plan):
        raise UserError(f"--workdir {workdir}: holds no study (no plan.json); give the study's workdir")
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, ".snapshot.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    records = os.path.join(tmp, "records")
    os.makedirs(records)
    for name in WORKDIR_FILES:
        if os.path.exists(os.path.join(workdir, name)):
            shutil.copy2(os.path.join(workdir, name), os.path.join(records, name))
    done = [r for r in plan.runs if runner.is_done(workdir, r)]
    for run in done:
        src, dst = runner.run_dir(workdir, run), runner.run_dir(records, run)
        os.makedirs(dst)
        for name in sorted(os.listdir(src)):
            if is_record(name) and os.path.isfile(os.path.join(src, name)):
                shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
    paths = report.build_report(plan, records)
    os.replace(paths["md"], os.path.join(tmp, "report.md"))
    os.replace(paths["json"], os.path.join(tmp, "study.json"))
    os.remove(paths["html"])  # the same plots again, base64-embedded; --report_only on the records rebuilds it
    os.replace(os.path.join(records, "plots"), os.path.join(tmp, "plots"))
    for name in ("records", "plots", "report.md", "study.json"):  # swap in: the snapshot replaces the last one
        target = os.path.join(out, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(tmp, name), target)
    os.rmdir(tmp)
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
        from keras_tl.study import plan as plan_lib

        print(json.dumps(snapshot(plan_lib.load_plan(a.recipe), a.workdir, a.out)))

    return cli.run(_main, args)


if __name__ == "__main__":
    sys.exit(main())
