"""Run a controlled study and write its report.

    python -m keras_tl.study --recipe recipes/telescope_study.yaml [--workdir DIR] [--shard i/N | auto[/N]]
                            [--resume] [--set k=v ...] [--dry_run] [--report_only] [--budget 40runs|2.5h]
                            [--engine local|ray] [--ray_address auto] [--runs_per_worker K]

Prints the plan and its estimated cost first; ``--dry_run`` stops there. ``--set study.seeds=2``
overrides the study section, any other ``--set`` the base training recipe. Several machines
sharing a workdir: give each ``--shard i/N`` (0-based), or run them all with ``--resume`` and
let the claim files hand out the runs. The report (report.html, report.md, study.json) is
written to the workdir after this worker's runs, marked PARTIAL while runs are missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from keras_tl import cli
from keras_tl import recipe as recipe_lib
from keras_tl.errors import UserError, WeightsError


def parser() -> argparse.ArgumentParser:
    p = cli.recipe_parser("keras_tl.study", __doc__,
                          recipe="study recipe YAML: a training recipe plus a study: section (required)",
                          overrides="override a key: --set study.seeds=2 or --set data.batch_size=16 (repeatable)",
                          workdir="study directory (default runs/studies/<recipe name>)")
    p.add_argument("--shard", help="run shard i of N (0-based), e.g. --shard 0/4; the shards partition the plan. "
                   "--shard auto[/N]: i from JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID, "
                   "N from /N or SLURM_ARRAY_TASK_COUNT")
    p.add_argument("--resume", action="store_true",
                   help="continue a study in an existing workdir: skip finished runs, take over stale claims")
    p.add_argument("--dry_run", action="store_true", help="print the plan and its cost, then stop")
    p.add_argument("--report_only", action="store_true", help="only (re)build the report from the finished runs in --workdir")
    p.add_argument("--keep_going", action="store_true", help="log a failing run and continue with the next one (default: stop)")
    p.add_argument("--in_process", action="store_true",
                   help="run every training run inside this process: no per-run start-up, but TensorFlow keeps "
                   "320-350 MB per finished run (default: a fresh process per run)")
    p.add_argument("--budget", help="adaptive seeds only: stop adding rounds of seeds when the next round would take the "
                   "study past this many runs (e.g. 40runs) or hours of summed run time (e.g. 2.5h, 90min)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this machine, one run at a time; ray: each run is a Ray task placed by study.resources "
                   "and retried if its worker dies (pip install \"keras_tl[ray]\")")
    p.add_argument("--ray_address", help="--engine ray: the cluster (auto, ray://host:10001); default RAY_ADDRESS if set, "
                   "else a local Ray on this machine")
    p.add_argument("--runs_per_worker", type=int, default=1,
                   help="a worker process runs this many runs in a row, then is replaced (Ray: max_calls): start-up "
                   "is paid once per K runs; 1: a fresh process per run")
    p.add_argument("--seconds_per_image", type=float, help="CPU seconds per training image for the cost estimate")
    p.add_argument("--measure_cost", action="store_true",
                   help="measure seconds per image with a few training steps of the base model")
    return p


def main(argv: Optional[list] = None) -> int:
    cli.setup_output()
    return cli.run(_main, parser().parse_args(argv))


def _set_resume_command(args, workdir: str) -> None:
    resume = ["--recipe", args.recipe, *[a for o in args.overrides for a in ("--set", o)], "--workdir", workdir]
    resume += (["--shard", args.shard] if args.shard else []) + (["--keep_going"] if args.keep_going else [])
    resume += (["--budget", args.budget] if args.budget else [])
    if args.engine != "local":
        resume += ["--engine", args.engine] + (["--ray_address", args.ray_address] if args.ray_address else [])
    if args.runs_per_worker != 1:
        resume += ["--runs_per_worker", str(args.runs_per_worker)]
    cli.set_resume_command(cli.command_line("keras_tl.study", resume + ["--resume"]))


def _run(args, plan, workdir: str, budget):
    """Run this worker's share of the plan (adaptive: in rounds) on the chosen engine."""
    from keras_tl.study import adaptive, engines, runner

    engines.check_options(engine=args.engine, runs_per_worker=args.runs_per_worker,
                          in_process=args.in_process)
    shard = runner.resolve_shard(args.shard)
    engine = engines.make_engine(args.engine, resources=plan.study.resources, address=args.ray_address,
                                 runs_per_worker=args.runs_per_worker)
    run_fn = runner.run_in_process if args.in_process else None  # None: the engine's default
    if plan.study.adaptive:
        runner.write_plan(workdir, plan)
        budget = adaptive.resolve_budget(workdir, budget)
        return adaptive.run_adaptive(plan, workdir, design=plan.study.design(), margin=adaptive.margin(plan),
                                     budget=budget, shard=shard, resume=args.resume, keep_going=args.keep_going,
                                     run_fn=run_fn, engine=engine)
    return runner.run_plan(plan, workdir, shard=shard, resume=args.resume, keep_going=args.keep_going, engine=engine,
                           run_fn=run_fn)


def _main(args) -> int:
    from keras_tl import fs
    from keras_tl.study import adaptive, report, runner
    from keras_tl.study import plan as plan_lib

    if not args.recipe:
        raise UserError("--recipe is required, e.g. --recipe recipes/study_smoke.yaml")
    plan = plan_lib.load_plan(args.recipe, args.overrides)
    spi, source = args.seconds_per_image, "--seconds_per_image"
    if spi is not None and spi <= 0:
        raise UserError(f"--seconds_per_image {spi}: must be > 0")
    if args.measure_cost:
        spi, source = plan_lib.measure_seconds_per_image(plan.base), "measured now, every layer training"
    print(plan_lib.format_plan(plan, plan_lib.estimate_cost(plan, spi, source), adaptive.plan_lines(plan)), flush=True)
    for arm in plan.arms:
        trap = recipe_lib.head_first_on_random_backbone(arm.recipe)
        if trap:
            print(f"  WARNING: arm {arm.label}: {trap}", flush=True)
    # A dry run only checks the cache; a real one downloads what is missing now, before the first run.
    problems = [] if args.report_only else plan_lib.missing_weights(plan, fetch=not args.dry_run)
    if args.dry_run:
        for p in problems:
            print(f"  MISSING WEIGHTS: {p}", flush=True)
        existing = args.workdir or os.path.join("runs", "studies", plan.name)
        if runner.check_plan(existing, plan):
            print(f"  {existing}: holds this plan; --resume continues it", flush=True)
        return 0
    if problems:
        # Checked before the first run: an hour in, a missing file would waste the runs before it.
        raise WeightsError(f"{problems[0]}" + (f" (and {len(problems) - 1} more weights sources)" if len(problems) > 1 else ""))
    workdir = args.workdir or os.path.join("runs", "studies", plan.name)
    budget = adaptive.parse_budget(args.budget)
    if budget is not None and not plan.study.adaptive:
        raise UserError(f"--budget {args.budget}: needs adaptive seeds; set study.seeds to {{min: 3, max: 12}} (or drop --budget)")
    if budget is not None and args.report_only:
        raise UserError(f"--budget {args.budget}: --report_only uses the budget recorded in the workdir; drop --budget, "
                        "or run the study with --resume --budget to change it")
    if not args.report_only:
        _set_resume_command(args, workdir)
        res = _run(args, plan, workdir, budget)
        print(f"study: ran {len(res.ran)}, already done {len(res.skipped_done)}, claimed by other workers "
              f"{len(res.skipped_claimed)}, failed {len(res.failed)}", flush=True)
    elif not fs.exists(os.path.join(workdir, "plan.json")):
        raise UserError(f"--report_only: {workdir} holds no study (no plan.json); run the study first or fix --workdir")
    st = runner.status(plan, workdir)
    paths = report.build_report(plan, workdir)
    finished = runner.collect(plan, workdir)
    if finished:
        from keras_tl.study import hparams

        print(f"study: TensorBoard HParams: tensorboard --logdir {workdir} "
              f"({hparams.write_hparams(plan, workdir, finished)})", flush=True)
    verdict = _verdict(workdir)
    if verdict:
        print(f"\n{verdict}\n", flush=True)
    if plan.study.adaptive:
        print(f"study: {st['done']} runs finished (adaptive seeds: at most {st['runs']}); report: {paths['html']}", flush=True)
    else:
        print(f"study: {st['done']}/{st['runs']} runs finished; report: {paths['html']}", flush=True)
    return 0


def _verdict(workdir: str) -> str:
    """The report's verdict paragraph (study.json), or "" when there is none."""
    import json

    from keras_tl import fs

    path = os.path.join(workdir, "study.json")
    try:
        return str(json.loads(fs.read_text(path)).get("verdict") or "")
    except (OSError, ValueError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
