"""Run a controlled study and write its report.

    python -m keras_tl.study --recipe recipes/telescope_study.yaml [--workdir DIR] [--shard i/N | auto[/N]]
                             [--resume] [--set k=v ...] [--dry_run] [--report_only]
                             [--engine local|ray] [--ray_address auto] [--runs_per_worker K]

Prints the plan and its estimated cost first; ``--dry_run`` stops there. ``--set study.seeds=2``
overrides the study section, any other ``--set`` the base training recipe. Several machines
sharing a workdir: give each ``--shard i/N`` (0-based), or run them all with ``--resume`` and
let the claim files hand out the runs. The report (report.html, report.md, study.json) is
written to the workdir after this worker's runs, marked PARTIAL while runs are missing.
"""

from __future__ import annotations

import os

from absl import app, flags

from keras_tl.errors import UserError, WeightsError

try:
    # keras_tl.train defines --recipe, --set and --workdir with the same meaning; absl allows a
    # flag name only once per process, so this CLI shares them rather than redefining them.
    from keras_tl import train as _train  # noqa: F401  (light: TensorFlow is imported lazily)
except ImportError:  # pragma: no cover - keras_tl.train missing in a partial checkout
    _train = None

FLAGS = flags.FLAGS


def _define(kind: str, name: str, default, help_text: str) -> None:
    if name not in FLAGS:
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text)


_define("string", "recipe", None, "Path to a study recipe YAML (a training recipe plus a study: section).")
_define("multi_string", "set", [], "Override a key: --set study.seeds=2 or --set data.batch_size=16 (repeatable).")
_define("string", "workdir", None, "Study directory (default runs/studies/<recipe name>).")
_define("string", "shard", None, "Run shard i of N (0-based), e.g. --shard 0/4; the shards partition the plan. "
        "--shard auto[/N]: i from JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID, "
        "N from /N or SLURM_ARRAY_TASK_COUNT.")
_define("bool", "resume", False, "Continue a study in an existing workdir: skip finished runs, take over stale claims.")
_define("bool", "dry_run", False, "Print the plan and its cost, then stop.")
_define("bool", "report_only", False, "Only (re)build the report from the finished runs in --workdir.")
_define("bool", "keep_going", False, "Log a failing run and continue with the next one (default: stop).")
_define("bool", "in_process", False, "Run every training run inside this process: no per-run start-up, but "
        "TensorFlow keeps 320-350 MB per finished run (default: a fresh process per run).")
if "engine" not in FLAGS:
    flags.DEFINE_enum("engine", "local", ["local", "ray"], "local: this machine, one run at a time; ray: each run is a "
                      "Ray task placed by study.resources and retried if its worker dies (pip install \"keras_tl[ray]\").")
_define("string", "ray_address", None, "--engine ray: the cluster (auto, ray://host:10001); default RAY_ADDRESS if set, "
        "else a local Ray on this machine.")
_define("integer", "runs_per_worker", 1, "A worker process runs this many runs in a row, then is replaced (Ray: "
        "max_calls): start-up is paid once per K runs, memory grows by ~330 MB per ResNet-50 run. 1: a fresh process per run.")
_define("float", "seconds_per_image", None, "CPU seconds per training image for the cost estimate.")
_define("bool", "measure_cost", False, "Measure seconds per image with a few training steps of the base model.")


def main(argv) -> int:
    del argv
    from keras_tl import fs
    from keras_tl.study import plan as plan_lib
    from keras_tl.study import report, runner

    if not FLAGS.recipe:
        raise UserError("--recipe is required, e.g. --recipe recipes/study_smoke.yaml")
    plan = plan_lib.load_plan(FLAGS.recipe, FLAGS.set)
    spi, source = FLAGS.seconds_per_image, "--seconds_per_image"
    if spi is not None and spi <= 0:
        raise UserError(f"--seconds_per_image {spi}: must be > 0")
    if FLAGS.measure_cost:
        spi, source = plan_lib.measure_seconds_per_image(plan.base), "measured now, every layer training"
    print(plan_lib.format_plan(plan, plan_lib.estimate_cost(plan, spi, source)), flush=True)
    # A dry run only checks the cache; a real one downloads what is missing now, before the first run.
    problems = [] if FLAGS.report_only else plan_lib.missing_weights(plan, fetch=not FLAGS.dry_run)
    if FLAGS.dry_run:
        for p in problems:
            print(f"  MISSING WEIGHTS: {p}", flush=True)
        return 0
    if problems:
        # Checked before the first run: an hour in, a missing file would waste the runs before it.
        raise WeightsError(f"{problems[0]}" + (f" (and {len(problems) - 1} more weights sources)" if len(problems) > 1 else ""))
    workdir = FLAGS.workdir or os.path.join("runs", "studies", plan.name)
    if not FLAGS.report_only:
        from keras_tl.study import engines

        engine = engines.make_engine(FLAGS.engine, resources=plan.study.resources, address=FLAGS.ray_address,
                                     runs_per_worker=FLAGS.runs_per_worker)
        if FLAGS.in_process and (FLAGS.engine != "local" or FLAGS.runs_per_worker > 1):
            raise UserError("--in_process is for --engine local with --runs_per_worker 1 (workers run runs in-process already); drop one")
        res = runner.run_plan(plan, workdir, shard=runner.resolve_shard(FLAGS.shard), resume=FLAGS.resume,
                              keep_going=FLAGS.keep_going, engine=engine,
                              run_fn=runner.run_in_process if FLAGS.in_process else None)
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
    print(f"study: {st['done']}/{st['runs']} runs finished; report: {paths['html']}", flush=True)
    return 0


def _entry(argv) -> int:
    from keras_tl import cli

    return cli.run(main, argv)


if __name__ == "__main__":
    app.run(_entry)
