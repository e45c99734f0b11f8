"""Disk use of a study before and after checkpoint pruning (train.keep_checkpoints): one JSON line.

    python tools/study_disk.py            # 32 runs (2 arms x 16 seeds), MobileNetV3-Small cut after block2, 32 px
    python tools/study_disk.py --runs 2 --cut_after null     # the whole MobileNetV3-Small
    python tools/study_disk.py --runs 2 --cut_after null --backbone resnet50

Runs the same small study twice, each in its own fresh workdir: once with
``--set train.keep_checkpoints=true`` (what every run kept before pruning existed) and once with
the default (a finished run deletes ``checkpoints/`` and ``backup/``), then ``du -sb`` each
workdir. Also reported: the bytes per run and how one run's directory splits between
checkpoints, backup, export and the rest, so the figure can be scaled to a bigger backbone (the
checkpoints and the export grow with the weights; the rest does not). The study recipe is
recipes/smoke.yaml (two phases of one epoch: head, then fine-tune) with the backbone (cut after a
stage, by default as the test suite's tiny model), image size and image count given here, augmentation off, arms ``freeze: [head_only, all]`` and runs/2 seeds; warm workers
(``--runs_per_worker``) keep TensorFlow's start-up out of the wall time. The workdirs are
deleted afterwards unless ``--keep DIR`` is given.

Measured on 2026-12-01 (2 cores shared, load average 5-7): the default 32 runs took 19 + 11 min
wall, 37.5 MB with checkpoints kept vs 24.9 MB pruned; ``--runs 2 --cut_after null --backbone
resnet50`` took 5 + 3 min, 999.5 MB vs 546.6 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)

STUDY_RECIPE = """extends: {smoke}
name: study_disk
model: {{backbone: {backbone}, cut_after: {cut_after}}}
data:
  image_size: [{size}, {size}]
  synthetic: {{count: {count}}}
  augment: {{flip: false, rot90: false}}  # the head phase then trains on cached features: cheaper runs
train:
  tensorboard: false
  phases:
    - {{name: head, trainable: head, epochs: 1}}
    - {{name: finetune, trainable: all, epochs: 1}}
study:
  freeze: [head_only, all]
  seeds: {seeds}
  baseline: {{freeze: head_only}}
"""


def du_sb(path: str) -> int:
    """``du -sb path``: apparent bytes, as a user would measure it."""
    return int(subprocess.run(["du", "-sb", path], check=True, capture_output=True, text=True).stdout.split()[0])


def split_of_runs(workdir: str) -> dict:
    """Summed bytes of every run directory's checkpoints/, backup/, export/ and everything else."""
    parts = {"checkpoints": 0, "backup": 0, "export": 0, "other": 0, "runs": 0}
    for root, dirs, files in os.walk(os.path.join(workdir, "runs")):
        if "recipe.yaml" not in files:
            continue
        dirs[:] = []  # a run directory: measure it whole, do not walk into it again
        parts["runs"] += 1
        total = du_sb(root)
        for name in ("checkpoints", "backup", "export"):
            sub = os.path.join(root, name)
            n = du_sb(sub) if os.path.exists(sub) else 0
            parts[name] += n
            total -= n
        parts["other"] += total
    return parts


def run_study(recipe: str, workdir: str, overrides: list, runs_per_worker: int, log_path: str) -> dict:
    cmd = [sys.executable, "-m", "keras_tl.study", "--recipe", recipe, "--workdir", workdir,
           "--runs_per_worker", str(runs_per_worker), *[a for o in overrides for a in ("--set", o)]]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    out = {"cmd": " ".join(["python", *cmd[1:]]), "exit": proc.returncode, "wall_s": round(wall, 1)}
    if proc.returncode:
        with open(log_path) as f:
            out["tail"] = f.read()[-1500:]
        return out
    parts = split_of_runs(workdir)
    total = du_sb(workdir)
    out.update({"du_sb_bytes": total, "du_sb_mb": round(total / 2**20, 1), "runs": parts.pop("runs")})
    out["bytes_per_run"] = round(total / out["runs"]) if out["runs"] else None
    out["run_dirs_split_mb"] = {k: round(v / 2**20, 2) for k, v in parts.items()}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tools/study_disk.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=32, help="runs in the study (2 arms x runs/2 seeds; even)")
    p.add_argument("--backbone", default="mobilenetv3small")
    p.add_argument("--cut_after", default="block2",
                   help="model.cut_after (block2: the test suite's tiny model, cheap; null: the whole backbone)")
    p.add_argument("--size", type=int, default=32, help="image size in pixels")
    p.add_argument("--count", type=int, default=64, help="synthetic images per run")
    p.add_argument("--runs_per_worker", type=int, default=16)
    p.add_argument("--keep", help="keep the two study workdirs under this directory")
    args = p.parse_args(argv)
    if args.runs < 2 or args.runs % 2:
        p.error("--runs must be even and at least 2 (2 arms x runs/2 seeds)")
    tmp = tempfile.mkdtemp(prefix="study_disk-")
    base = args.keep or tmp
    os.makedirs(base, exist_ok=True)
    recipe = os.path.join(tmp, "study_disk.yaml")
    with open(recipe, "w") as f:
        f.write(STUDY_RECIPE.format(smoke=os.path.join(ROOT, "recipes", "smoke.yaml"), backbone=args.backbone,
                                    cut_after=args.cut_after, size=args.size, count=args.count, seeds=args.runs // 2))
    result = {"tool": "study_disk", "runs": args.runs, "backbone": args.backbone, "cut_after": args.cut_after,
              "image_size": args.size,
              "images": args.count}
    try:
        for name, overrides in (("keep_checkpoints", ["train.keep_checkpoints=true"]), ("pruned", [])):
            workdir = os.path.join(base, f"study_{name}")
            print(f"study_disk: {name}: {args.runs} runs in {workdir}", file=sys.stderr, flush=True)
            result[name] = run_study(recipe, workdir, overrides, args.runs_per_worker, os.path.join(base, f"{name}.log"))
        kept, pruned = result["keep_checkpoints"].get("du_sb_bytes"), result["pruned"].get("du_sb_bytes")
        if kept and pruned:
            result["saved_fraction"] = round(1 - pruned / kept, 3)
            result["kept_over_pruned"] = round(kept / pruned, 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0 if all(result[k]["exit"] == 0 for k in ("keep_checkpoints", "pruned")) else 1


if __name__ == "__main__":
    sys.exit(main())
