"""Adaptive seeds in a study (fake training runs): rounds, resume, shards, budget."""

import os
import re
import threading

import numpy as np
import pytest

from keras_tl.errors import WorkdirError
from keras_tl.study import adaptive, runner, sequential
from keras_tl.study import plan as plan_lib
from test_study_runner import BASE  # tests/ is on sys.path (pytest's rootdir-relative import)

# Arm "all" is clearly better than the baseline head_only; from_conv4 is not different.
EFFECT = {"head_only": 0.0, "from_conv4": 0.0, "all": 0.20}
DESIGN = sequential.Design(sequential.schedule(3, 8))


def make_plan(tmp_path, seeds=8):
    (tmp_path / "base.yaml").write_text(BASE)
    path = tmp_path / "study.yaml"
    path.write_text(f"extends: base.yaml\nname: s\nstudy:\n  freeze: [head_only, from_conv4, all]\n  seeds: {seeds}\n"
                    "  baseline: {freeze: head_only}\n")
    return plan_lib.load_plan(str(path))


class FakeTrain:
    """Accuracy = 0.5 + the arm's effect + seed noise (deterministic per arm and seed)."""

    def __init__(self, plan, crash_after=None):
        self.arm_freeze = {a.id: a.values["freeze"] for a in plan.arms}
        self.calls, self.crash_after = [], crash_after
        self.lock = threading.Lock()

    def __call__(self, recipe, workdir):
        arm = os.path.basename(os.path.dirname(workdir))
        with self.lock:
            if self.crash_after is not None and len(self.calls) == self.crash_after:
                raise KeyboardInterrupt  # the study is interrupted in the middle of a round
            self.calls.append((arm, recipe.seed))
        rng = np.random.default_rng([recipe.seed, len(arm)])
        acc = 0.5 + EFFECT[self.arm_freeze[arm]] + rng.normal(0, 0.03)
        return {"test": {"accuracy": acc, "loss": 1.0}, "val": {"accuracy": acc}, "history": {}, "images_seen": 10,
                "wall_time": 60.0, "seed": recipe.seed}


def _decisions(plan, wd, **kw):
    state, _, _ = adaptive.study_state(plan, runner.collect(plan, wd), DESIGN, **kw)
    return {k: (tr.status, tr.n) for k, tr in state.tracks.items()}


def test_rounds_add_seeds_only_to_open_comparisons(tmp_path):
    plan = make_plan(tmp_path)
    wd = str(tmp_path / "wd")
    fake = FakeTrain(plan)
    adaptive.run_adaptive(plan, wd, design=DESIGN, run_fn=fake, log=lambda s: None)
    dec = _decisions(plan, wd)
    by_freeze = {plan.arm(k).values["freeze"]: v for k, v in dec.items()}
    assert by_freeze["all"][0] == sequential.BETTER and by_freeze["all"][1] < 8
    assert by_freeze["from_conv4"] == (sequential.OUT_OF_SEEDS, 8)
    n_all = by_freeze["all"][1]
    arm_all = next(a.id for a in plan.arms if a.values["freeze"] == "all")
    # The settled arm got no seeds past its stopping look; the others ran to max; nothing twice.
    assert sorted(k for a, k in fake.calls if a == arm_all) == list(range(n_all))
    assert len(fake.calls) == len(set(fake.calls)) == n_all + 2 * 8


def test_resume_makes_the_same_decisions(tmp_path):
    plan = make_plan(tmp_path)
    straight = str(tmp_path / "straight")
    adaptive.run_adaptive(plan, straight, design=DESIGN, run_fn=FakeTrain(plan), log=lambda s: None)
    wd = str(tmp_path / "wd")
    with pytest.raises(KeyboardInterrupt):
        adaptive.run_adaptive(plan, wd, design=DESIGN, run_fn=FakeTrain(plan, crash_after=10), log=lambda s: None)
    assert _decisions(plan, wd) != _decisions(plan, straight)
    with pytest.raises(WorkdirError, match="--resume"):
        adaptive.run_adaptive(plan, wd, design=DESIGN, run_fn=FakeTrain(plan), log=lambda s: None)
    again = FakeTrain(plan)
    adaptive.run_adaptive(plan, wd, design=DESIGN, run_fn=again, resume=True, log=lambda s: None)
    assert _decisions(plan, wd) == _decisions(plan, straight)
    assert sorted(runner.collect(plan, wd)) == sorted(runner.collect(plan, straight))


def test_two_shards_agree_on_rounds(tmp_path):
    plan = make_plan(tmp_path)
    straight = str(tmp_path / "straight")
    adaptive.run_adaptive(plan, straight, design=DESIGN, run_fn=FakeTrain(plan), log=lambda s: None)
    wd = str(tmp_path / "wd")
    fake = FakeTrain(plan)
    errors = []

    def worker(i):
        try:
            adaptive.run_adaptive(plan, wd, design=DESIGN, run_fn=fake, shard=(i, 2), log=lambda s: None,
                                  poll_seconds=0.05)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert _decisions(plan, wd) == _decisions(plan, straight)
    assert len(fake.calls) == len(set(fake.calls)) == len(runner.collect(plan, straight))


def test_budget_in_runs_ends_open_comparisons(tmp_path):
    plan = make_plan(tmp_path)
    wd = str(tmp_path / "wd")
    fake = FakeTrain(plan)
    budget = adaptive.parse_budget("12runs")  # 3 arms x 3 seeds = 9; the next look (x 4 seeds) would need 12
    adaptive.run_adaptive(plan, wd, design=DESIGN, budget=budget, run_fn=fake, log=lambda s: None)
    dec = _decisions(plan, wd, budget=budget)
    assert len(fake.calls) <= 12
    assert sequential.OUT_OF_BUDGET in {s for s, _ in dec.values()}


def _study(tmp_path, study):
    (tmp_path / "base.yaml").write_text(BASE)
    path = tmp_path / "study.yaml"
    path.write_text("extends: base.yaml\nname: s\nstudy:\n" + "".join("  " + line + "\n" for line in study.splitlines()))
    return str(path)


def test_adaptive_seeds_in_the_study_recipe(tmp_path):
    plan = plan_lib.load_plan(_study(tmp_path, "freeze: [head_only, all]\nseeds: {min: 3, max: 9}\nmargin: 2"))
    assert plan.study.adaptive and plan.study.seeds == 9 and plan.study.margin == 2.0
    assert plan.study.design().looks == (3, 5, 7, 9) and len(plan.runs) == 18  # every run the study may need
    from keras_tl.study import adaptive

    text = plan_lib.format_plan(plan, plan_lib.estimate_cost(plan, 0.01), adaptive.plan_lines(plan))
    assert "3-9 seeds (adaptive)" in text and "looks at 3, 5, 7, 9" in text and "at least 6" in text and "at most 18" in text
    over = plan_lib.load_plan(_study(tmp_path, "freeze: [head_only, all]\nseeds: {min: 3, max: 9}"), ["study.seeds.step=3"])
    assert over.study.design().looks == (3, 6, 9)
    bad = {
        "seeds: {min: 3, mx: 9}": "study.seeds.mx: unknown key (did you mean max?)",
        "seeds: {min: 2, max: 9}": "study.seeds.min: 2 is too few",
        "seeds: {max: 9}": "min is missing",
        "seeds: 4\nmargin: 2": "study.margin: equivalence is decided only with adaptive seeds",
        "seeds: {min: 3, max: 9}\nmargin: -1": "study.margin: expected a positive number",
        "seeds: {min: 3, max: 9}\nlr_grid: [0.01, 0.001]": "study.lr_grid: cannot be combined with adaptive seeds",
    }
    for extra, msg in bad.items():
        with pytest.raises(plan_lib.UserError, match=re.escape(msg)):
            plan_lib.load_plan(_study(tmp_path, "freeze: [head_only, all]\n" + extra))


def test_report_names_the_method_and_seeds_per_comparison(tmp_path):
    from keras_tl.study import report

    plan = plan_lib.load_plan(_study(tmp_path, "freeze: [head_only, from_conv4, all]\nseeds: {min: 3, max: 8}\n"
                                                "baseline: {freeze: head_only}"))
    wd = str(tmp_path / "wd")
    adaptive.run_adaptive(plan, wd, design=plan.study.design(), run_fn=FakeTrain(plan), log=lambda s: None)
    paths = report.build_report(plan, wd)
    study = __import__("json").load(open(paths["json"]))
    assert study["adaptive"]["method"] == sequential.METHOD and study["adaptive"]["done"]
    by = {c["values"]["freeze"]: c for c in study["comparisons"]}
    assert by["all"]["verdict"] == sequential.BETTER and by["all"]["n"] == by["all"]["seeds_used"] < 8
    assert by["from_conv4"]["verdict"] == sequential.OUT_OF_SEEDS and by["from_conv4"]["n"] == 8
    assert study["runs_done"] == study["runs_total"] == 2 * 8 + by["all"]["n"]
    md = open(paths["md"]).read()
    assert "95% repeated CI" in md and "seeds used (max)" in md and "Lan-DeMets" in md
    assert f"| {by['all']['n']} (8) |" in md and "no evidence of a difference at the maximum of 8 seeds" in md


def test_cli_budget_needs_adaptive_seeds_and_dry_run_shows_the_looks(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    fixed = _study(tmp_path, "freeze: [head_only, all]\nseeds: 2")
    r = subprocess.run([sys.executable, "-m", "keras_tl.study", "--recipe", fixed, "--budget", "10runs", "--workdir",
                        str(tmp_path / "wd")], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "--budget 10runs: needs adaptive seeds" in r.stderr
    assert not (tmp_path / "wd").exists()
    r = subprocess.run([sys.executable, "-m", "keras_tl.study", "--recipe", fixed, "--dry_run",
                        "--set", "study.seeds={min: 3, max: 12}"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "looks at 3, 6, 9, 12 seeds per comparison" in r.stdout
    r = subprocess.run([sys.executable, "-m", "keras_tl.study", "--recipe", fixed, "--report_only", "--budget", "2h",
                        "--set", "study.seeds={min: 3, max: 12}", "--workdir", str(tmp_path / "wd")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "--report_only uses the budget recorded in the workdir" in r.stderr
