"""keras_tl.ask: budget parsing and fitting, the recommendation read from study.json, and one end-to-end
run on a tiny generated folder that is killed after its first finished run and resumed by the same command."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from keras_tl import ask
from keras_tl import recipe as recipe_lib
from keras_tl.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_folder(root, per_class=20, size=32, seed=0):
    """Two classes of 32 px PNGs: noise, and noise with a bright square (learnable, not instantly)."""
    rng = np.random.default_rng(seed)
    for c, cls in enumerate(["disk", "spiral"]):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 120, (size, size, 3)).astype(np.uint8)
            if c:
                x, y = rng.integers(4, size - 14, 2)
                a[y:y + 10, x:x + 10] += 100
            Image.fromarray(a).save(os.path.join(root, cls, f"{i}.png"))
    return root


def test_parse_budget():
    assert ask.parse_budget("3h") == 10800
    assert ask.parse_budget("1h30m") == 5400
    assert ask.parse_budget("20m") == 1200
    assert ask.parse_budget("90") == 90
    for bad in ("soon", "0", "-5m", ""):
        with pytest.raises(UserError, match="--budget"):
            ask.parse_budget(bad)


def _base(tmp_path):
    folder = make_folder(str(tmp_path / "imgs"), per_class=4)
    return ask.base_recipe(folder, "efficientnet_lite0", {"data.image_size": [32, 32]}, [])


CAND = {"last_stage": "top", "cut_after": "block7", "weak_last": True, "freeze_from": "block7", "chance": 0.5}
# A fake measurement (seconds): what each run pays besides its training steps is large here, as on a loaded machine.
COSTS = {"seconds_per_image": 0.01, "eval_seconds_per_image": 0.004, "startup": 9.0, "build": 3.0, "trace_train": 6.0,
         "trace_eval": 2.0, "export": 1.5}


def test_cost_estimate_includes_the_per_run_fixed_cost(tmp_path):
    base = _base(tmp_path)
    plan = ask.make_plan(base, ask.study_section(ask.candidate_levels(CAND, None)[0], 3, (), 1000))
    est = ask.estimate(plan, COSTS, n_eval=300)
    # 2 phases: start-up + build + 2 x (train + eval tracing) + final eval tracing + export + 300 images x (5 epochs + 1) x eval cost
    fixed = 9.0 + 3.0 + 2 * (6.0 + 2.0) + 2.0 + 1.5 + 300 * 6 * 0.004
    assert ask.run_fixed_seconds(COSTS, base, 300) == pytest.approx(fixed)
    assert est.runs == 6 and est.overhead_per_run == pytest.approx(fixed, abs=0.1)
    assert est.cpu_seconds == pytest.approx(est.images * 0.01 + 6 * fixed)
    no_fixed = ask.estimate(plan, {**COSTS, **{k: 0.0 for k in COSTS if k != "seconds_per_image"}}, n_eval=300)
    assert no_fixed.cpu_seconds == pytest.approx(est.images * 0.01)
    assert est.cpu_seconds > 1.5 * no_fixed.cpu_seconds


def test_fit_plan_adaptive_seeds_fit_the_budget_and_say_what_would(tmp_path):
    base = _base(tmp_path)
    levels = ask.candidate_levels(CAND, None)
    assert len(levels) == 4 and len(levels[-1]) == 8  # 2 inits x 2 sizes + 2 freeze + reset + cut
    fits = {b: ask.fit_plan(base, levels, 1000, COSTS, 300, b) for b in (400, 1500, 20 * 3600)}
    for fit in fits.values():
        assert fit["cost"].cpu_seconds <= fit["budget_s"]  # the plan's most expensive outcome never exceeds the budget
    tiny, small, big = fits[400]["section"]["seeds"], fits[1500]["section"]["seeds"], fits[20 * 3600]["section"]["seeds"]
    assert tiny == ask.FALLBACK_SEEDS and fits[400]["level"] == 0  # not even 3 seeds fit: the main question, fixed seeds
    assert small["min"] == ask.MIN_SEEDS and ask.MIN_SEEDS <= small["max"] < ask.MAX_SEEDS
    assert big == {"min": ask.MIN_SEEDS, "max": ask.MAX_SEEDS} and fits[20 * 3600]["level"] == 3
    assert fits[20 * 3600]["plan"].study.adaptive and "lr_grid" not in fits[20 * 3600]["section"]
    with pytest.raises(UserError, match=r"pass --budget \d+m or more"):
        ask.fit_plan(base, levels, 1000, COSTS, 300, 60, spent_s=30)


def test_candidate_arms_with_source_weights():
    src = "/data/survey.weights.h5"
    weak = ask.candidate_levels(CAND, src)
    source = {"label": "source", "weights": src}
    assert [a["init"] for a in weak[0]] == ["imagenet", "none", source]
    assert [a["init"] for a in weak[1] if a["data_fraction"] < 1] == ["imagenet", "none", source]
    extra = weak[3][len(weak[2]):]
    assert extra == [ask._arm("imagenet", reinit=["top"]), ask._arm("imagenet", cut_after="block7")]
    strong = ask.candidate_levels(dict(CAND, weak_last=False), src)
    assert len(strong) == 3 and not any(a["reinit"] or a["cut_after"] for a in strong[-1])


def _adaptive_study(**info):
    return {"runs_done": 6, "runs_total": 6, "comparisons": [{"verdict": "better"}],
            "adaptive": {"done": True, "runs_missing": 0, "runs_max": 24, **info}}


def test_partial_only_when_the_budget_stopped_the_rule():
    assert not ask.is_partial(_adaptive_study())  # 6 of at most 24 runs: the rule settled it early
    assert ask.is_partial(_adaptive_study(done=False, runs_missing=4))  # a look still waits for runs
    assert ask.is_partial(dict(_adaptive_study(), comparisons=[{"verdict": "undecided (out of budget)"}]))
    assert not ask.is_partial(dict(_adaptive_study(), comparisons=[{"verdict": "undecided (out of seeds)"}]))
    assert ask.is_partial({"runs_done": 3, "runs_total": 4, "comparisons": [], "adaptive": None})
    assert "PARTIAL" in ask.partial_text(_adaptive_study(done=False, runs_missing=4)) and not ask.partial_text(_adaptive_study())


def _study(arms, comparisons=()):
    return {"split": "test", "metric": "accuracy", "higher_is_better": True, "scale": 100.0, "unit": "points",
            "seeds": 3, "arms": arms, "comparisons": list(comparisons)}


def _arm(id_, init, per_seed, **values):
    v = {"init": init, "freeze": "all", "reinit": [], "cut_after": None, "data_fraction": 1.0, **values}
    m = float(np.mean(per_seed))
    return {"id": id_, "label": id_, "values": v, "seeds": list(range(len(per_seed))), "per_seed": per_seed,
            "mean": m, "lo": m - 0.05, "hi": m + 0.05, "lr_picked": 1e-4, "wall_time": {"total": 10.0}}


def test_recommendation_and_extra_comparisons_from_study_json():
    study = _study([_arm("in", "imagenet", [0.80, 0.82, 0.81]), _arm("sc", "none", [0.60, 0.62, 0.61]),
                    _arm("reset", "imagenet", [0.85, 0.88, 0.86], reinit=["top"]),
                    _arm("head", "imagenet", [0.70, 0.72, 0.69], freeze="head_only")])
    rec = ask.recommend(json.loads(json.dumps(study)))
    assert rec["arm_id"] == "reset" and rec["seed"] == 1 and rec["lr"] == 1e-4
    extra = {c["arm_id"]: c for c in ask.extra_comparisons(study)}
    assert set(extra) == {"reset", "head"}
    assert extra["reset"]["kind"] == "reset" and extra["reset"]["mean"] == pytest.approx(0.0533, abs=1e-3)
    assert extra["head"]["kind"] == "freeze" and extra["head"]["mean"] < 0


def _ask_cmd(folder, budget):
    return [sys.executable, "-m", "keras_tl.ask", "--data", folder, "--backbone", "efficientnet_lite0",
            "--budget", budget, "--in_process", "--set", "data.batch_size=8"]


def test_ask_end_to_end_killed_and_resumed(tmp_path):
    folder = make_folder(str(tmp_path / "galaxies"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    budget = "4m"  # the smallest plan (2 arms x 2 seeds): CI-sized
    cmd = _ask_cmd(folder, budget)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    runs = tmp_path / "runs" / "ask"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if list(runs.glob("*/study/runs/*/seed*/DONE")):
            break
        time.sleep(1)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # mid-study: one run finished, the next one under way
    proc.wait()
    (workdir,) = list(runs.iterdir())
    assert (workdir / "ask.json").exists() and not (workdir / "answer.txt").exists()
    done = {p: p.stat().st_mtime_ns for p in workdir.glob("study/runs/*/seed*/DONE")}

    t1 = time.time()
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    second = time.time() - t1
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "(resuming)" in out
    assert {p: p.stat().st_mtime_ns for p in done} == done  # the runs finished before the kill were not run again

    state = json.loads((workdir / "ask.json").read_text())
    study = json.loads((workdir / "study" / "study.json").read_text())
    assert study["runs_total"] == len(state["plan"]["section"]["arms"]) * state["plan"]["section"]["seeds"]
    assert study["runs_done"] > len(done)  # the rerun trained more (all of the plan unless its budget ran out first)
    if study["runs_done"] < study["runs_total"]:
        assert "PARTIAL" in (workdir / "answer.txt").read_text()
    # The recommendation is study.json's best arm, and recommended.yaml is its recipe at its picked rate.
    rec = ask.recommend(study)
    assert state["answer"]["recommended"]["arm_id"] == rec["arm_id"]
    recipe = recipe_lib.load(str(workdir / "recommended.yaml"))
    assert recipe.model.weights == {"imagenet": "imagenet", "none": "none"}[rec["values"]["init"]]
    assert state["answer"]["model"] and os.path.exists(state["answer"]["model"])
    answer = (workdir / "answer.txt").read_text()
    first_paragraph = answer.split("\n\n")[0]
    assert "an ImageNet start" in first_paragraph and "training from scratch" in first_paragraph and "95% CI" in first_paragraph
    assert first_paragraph in out  # printed as well
    assert (workdir / "report.md").read_text().split("\n\n")[1] == first_paragraph
    # Budget: the plan's estimate fits what was left after inspection and probes, and the resuming call
    # (which gets the budget again) ends within 20% of it, measured.
    budget_s = ask.parse_budget(budget)
    assert state["plan"]["estimate_s"] <= state["plan"]["budget_left_s"] <= budget_s
    assert second <= 1.2 * budget_s, (second, state["seconds"])
