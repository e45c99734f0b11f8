"""Controlled studies: one recipe expanded into paired arms × seeds, run resumably, reported with statistics.

    python -m keras_tl.study --recipe recipes/study_smoke.yaml [--workdir DIR] [--shard i/N] [--resume] [--dry_run]

Modules: :mod:`.plan` (study recipe → arms and runs, cost), :mod:`.runner` (claims, shards,
resume), :mod:`.stats` (paired statistics), :mod:`.report` (study.json, report.md/html).
Nothing here imports TensorFlow at import time.
"""

from keras_tl.study.plan import Arm, Plan, Run, StudyConfig, estimate_cost, expand, format_plan, load_plan, load_study
from keras_tl.study.report import analyze, build_report, write_report
from keras_tl.study.runner import collect, parse_shard, run_plan, shard_runs

__all__ = [
    "Arm", "Plan", "Run", "StudyConfig", "analyze", "build_report", "collect", "estimate_cost", "expand",
    "format_plan", "load_plan", "load_study", "parse_shard", "run_plan", "shard_runs", "write_report",
]
