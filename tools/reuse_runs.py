"""Hard-link a study's finished runs into another study whose runs train the same recipes.

    python tools/reuse_runs.py --from recipes/lite0_imagenet_study.yaml runs/studies/lite0_imagenet \\
                               --to recipes/lite0_budget_study.yaml runs/studies/lite0_budget

A run is reused only when its training recipe, as the runner would train it, is the same in both
studies apart from ``name`` (the study's name), and the source run is finished (DONE and
metrics.json). Its directory is hard-linked (``cp -al``: no extra disk) to where the target study
looks for it; ``--resume`` then skips it. Runs already present in the target are left alone.
Prints one line per reused run and a JSON summary; ``--dry_run`` only prints.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def training_text(run) -> str:
    from keras_tl import recipe as recipe_lib

    return "\n".join(line for line in recipe_lib.dump(run.recipe).splitlines() if not line.startswith("name:"))


def matches(source_plan, target_plan):
    """[(target run, source run)] for every target run whose training recipe a source run has."""
    by_text = {training_text(r): r for r in source_plan.runs}
    pairs = ((r, by_text.get(training_text(r))) for r in target_plan.runs)
    return [(r, source) for r, source in pairs if source is not None]


def reuse(source_plan, source_dir: str, target_plan, target_dir: str, dry_run: bool = False, log=print) -> dict:
    """Hard-link every finished source run into the target study (see the module docstring).

    The source workdir must hold ``source_plan`` and the target workdir, if it exists, ``target_plan``
    (WorkdirError otherwise; a missing source plan.json is a UserError). A run is linked without its
    ``checkpoints/`` and ``backup/`` (a finished run is never resumed, and they may be being pruned), into
    ``<run>.partial`` and renamed into place, so a failed or repeated call leaves no half-linked run.
    """
    import shutil

    from keras_tl.errors import UserError
    from keras_tl.study import runner

    if not runner.check_plan(source_dir, source_plan):
        raise UserError(f"--from {source_dir}: holds no study (no plan.json); give the source study's workdir")
    runner.check_plan(target_dir, target_plan)
    linked, present, unfinished = [], [], []
    for target, source in matches(source_plan, target_plan):
        dst = runner.run_dir(target_dir, target)
        if os.path.exists(dst) or os.path.exists(runner.claim_path(target_dir, target)):
            present.append(target.key)  # finished, running or claimed in the target: left alone
            continue
        if not runner.is_done(source_dir, source):
            unfinished.append(target.key)
            continue
        src = runner.run_dir(source_dir, source)
        log(f"reuse: {source.key} -> {target.key}")
        if not dry_run:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            partial = dst + ".partial"
            shutil.rmtree(partial, ignore_errors=True)  # left by an earlier failed call
            os.makedirs(partial)
            names = [n for n in sorted(os.listdir(src)) if n not in ("checkpoints", "backup")]
            proc = subprocess.run(["cp", "-al", *[os.path.join(src, n) for n in names], partial],
                                  capture_output=True, text=True)
            if proc.returncode:
                shutil.rmtree(partial, ignore_errors=True)
                raise UserError(f"cannot link {src} into {dst}: {proc.stderr.strip()}; nothing was linked for it, rerun to retry")
            os.rename(partial, dst)  # a run dir appears whole or not at all
        linked.append(target.key)
    return {"linked": len(linked), "already_present": len(present), "source_unfinished": len(unfinished),
            "target_runs": len(target_plan.runs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="source", nargs=2, metavar=("RECIPE", "WORKDIR"), required=True)
    ap.add_argument("--to", dest="target", nargs=2, metavar=("RECIPE", "WORKDIR"), required=True)
    ap.add_argument("--dry_run", action="store_true")
    args = ap.parse_args(argv)
    from keras_tl import cli

    cli.setup_output()

    def _main(a):
        from keras_tl.study import plan as plan_lib

        src_plan, dst_plan = plan_lib.load_plan(a.source[0]), plan_lib.load_plan(a.target[0])
        print(json.dumps(reuse(src_plan, a.source[1], dst_plan, a.target[1], dry_run=a.dry_run)))

    return cli.run(_main, args)


if __name__ == "__main__":
    sys.exit(main())
