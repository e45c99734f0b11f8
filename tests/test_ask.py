"""keras_tl.ask: budget parsing and fitting, the recommendation read from study.json, and one end-to-end
run on a tiny generated folder that is killed after its first finished run and resumed by the same command."""

import json
import os
import signal
import subprocess
import sys
import time
import zlib

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
         "trace_head": 2.5, "trace_eval": 2.0, "export": 1.5}


def test_cost_estimate_includes_the_per_run_fixed_cost(tmp_path):
    base = _base(tmp_path)
    plan = ask.make_plan(base, ask.study_section(ask.candidate_levels(CAND, None)[0], 3, (), 1000))
    est = ask.estimate(plan, COSTS, n_eval=300)
    # start-up + build + train tracing (head-only warm-up 2.5 s, fine-tune 6 s) + eval tracing in 2 phases
    # and once more + export + 300 images x (5 epochs + 1) x eval cost
    fixed = 9.0 + 3.0 + (2.5 + 6.0) + 3 * 2.0 + 1.5 + 300 * 6 * 0.004
    assert ask.run_fixed_seconds(COSTS, base, 300) == pytest.approx(fixed)
    # Scratch trains every layer in its first phase too: its runs trace the full train step twice.
    scratch = fixed - 2.5 + 6.0
    assert [a.recipe.train.phases[0].trainable for a in plan.arms] == ["head", "all"]
    assert [a.label for a in plan.arms] == ["imagenet", "scratch"]  # the warm-up rides on the init, not on an axis
    assert est.runs == 6 and est.overhead_per_run == pytest.approx((fixed + scratch) / 2, abs=0.1)
    assert est.cpu_seconds == pytest.approx(est.images * 0.01 + 3 * fixed + 3 * scratch)
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
    assert [a["init"] for a in weak[0]] == ["imagenet", ask.SCRATCH, source]
    assert [a["init"] for a in weak[1] if a["data_fraction"] < 1] == ["imagenet", ask.SCRATCH, source]
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
    study = _study([_arm("in", "imagenet", [0.80, 0.82, 0.81]), _arm("sc", ask.SCRATCH, [0.60, 0.62, 0.61]),
                    _arm("reset", "imagenet", [0.85, 0.88, 0.86], reinit=["top"]),
                    _arm("head", "imagenet", [0.70, 0.72, 0.69], freeze="head_only")])
    rec = ask.recommend(json.loads(json.dumps(study)))
    assert rec["arm_id"] == "reset" and rec["seed"] == 1 and rec["lr"] == 1e-4
    extra = {c["arm_id"]: c for c in ask.extra_comparisons(study)}
    assert set(extra) == {"reset", "head"}
    assert extra["reset"]["kind"] == "reset" and extra["reset"]["mean"] == pytest.approx(0.0533, abs=1e-3)
    assert extra["head"]["kind"] == "freeze" and extra["head"]["mean"] < 0


STAGES = ["stem"] + [f"block{i}" for i in range(1, 8)] + ["top"]


def fake_probe(last_in, last_none):
    """Stands in for keras_tl.probe: writes probe.json with ImageNet's and random init's last-stage accuracy."""
    def run_probes(recipe, source, workdir, log=print):
        curve = lambda last: [0.5 + 0.03 * i for i in range(len(STAGES) - 1)] + [last]  # noqa: E731
        out = {"stages": STAGES, "chance": 0.5, "results": {"imagenet": {"linear": curve(last_in)}, "none": {"linear": curve(last_none)}}}
        if source:
            out["results"][source] = {"linear": curve(last_none)}
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "probe.json"), "w") as f:
            json.dump(out, f)
        return out
    return run_probes


def fake_train(recipe, run_dir):
    """Stands in for a training run: ImageNet starts learn (0.85), scratch does not (0.12); tiny seed noise."""
    # Noise seeded by the run's place in the study, not by the temp dir's path (which differs under
    # pytest-xdist and once left the first look's t just under its Holm-adjusted bound).
    rng = np.random.default_rng([recipe.seed, zlib.crc32("/".join(run_dir.split(os.sep)[-3:]).encode())])
    acc = (0.85 if recipe.model.weights == "imagenet" else 0.12) + rng.normal(0, 0.0005)
    return {"test": {"accuracy": acc, "loss": 1.0}, "val": {"accuracy": acc}, "history": {}, "images_seen": 10,
            "wall_time": 0.1, "seed": recipe.seed}


def test_budget_notes_with_adaptive_seeds():
    main = {"values": {"init": "imagenet", "freeze": "all", "reinit": [], "cut_after": None, "data_fraction": 1.0}, "n": 6}
    rec = {"lo": 0.8}
    study = dict(_adaptive_study(), seeds=12)
    for verdict, says in [("undecided (out of seeds)", "at the maximum of 6 seeds"), ("running", "budget ran out"),
                          ("undecided (out of budget)", "its maximum of 12 seeds needs ~")]:
        (note,) = ask.budget_notes(dict(study, comparisons=[dict(main, verdict=verdict)]), rec, 0.5, 100.0, 60.0)
        assert says in note and "--budget" in note
    for settled in ("better", "both arms at chance", "equivalent within the margin"):
        assert ask.budget_notes(dict(study, comparisons=[dict(main, verdict=settled)]), rec, 0.5, 100.0, 60.0) == []


def _ask_args(folder, workdir, *extra):
    return ask._parser().parse_args(["--data", folder, "--backbone", "efficientnet_lite0", "--workdir", workdir,
                                     "--set", "data.image_size=[32,32]", *extra])


@pytest.fixture
def fakes(monkeypatch):
    """ask with a fake measurement; the probes are set per test."""
    monkeypatch.setattr(ask, "measure_costs", lambda recipe, n, **kw: dict(COSTS))
    return monkeypatch


def test_dry_run_weak_last_stage_plans_reset_and_cut_as_a_valid_study_recipe(tmp_path, fakes, capsys):
    from keras_tl.study import plan as plan_lib

    fakes.setattr(ask, "run_probes", fake_probe(last_in=0.50, last_none=0.51))  # ImageNet's top no better than random
    folder = make_folder(str(tmp_path / "imgs"), per_class=6)
    state = ask.ask(_ask_args(folder, str(tmp_path / "wd"), "--budget", "20h", "--dry_run"))
    assert state["candidates"]["weak_last"] and state["plan"]["level"] == 3
    assert state["plan"]["section"]["seeds"] == {"min": ask.MIN_SEEDS, "max": ask.MAX_SEEDS}
    # The study recipe ask wrote is one keras_tl.study reads, and it expands to the plan ask recorded.
    plan = plan_lib.load_plan(str(tmp_path / "wd" / "study.yaml"))
    assert plan.fingerprint() == state["plan"]["fingerprint"] and plan.study.adaptive
    arms = [a.values for a in plan.arms]
    assert {"reinit": ["top"]}.items() <= next(a for a in arms if a["reinit"]).items()
    assert next(a for a in arms if a["cut_after"])["cut_after"] == "block7"
    assert {a["freeze"] for a in arms} == {"all", "head_only", "from_block7"}
    out = capsys.readouterr().out
    assert "reset and cut become arms" in out and "adaptive seeds" in out and "per run ~" in out
    assert not (tmp_path / "wd" / "study").exists()  # --dry_run: nothing ran


def test_ask_with_fake_runs_adaptive_seeds_stop_when_settled(tmp_path, fakes, capsys):
    from keras_tl.study import runner

    fakes.setattr(ask, "run_probes", fake_probe(last_in=0.90, last_none=0.55))
    fakes.setattr(runner, "run_in_process", fake_train)
    folder = make_folder(str(tmp_path / "imgs"), per_class=6)
    state = ask.ask(_ask_args(folder, str(tmp_path / "wd"), "--budget", "30m", "--in_process"))
    study = json.loads((tmp_path / "wd" / "study" / "study.json").read_text())
    assert study["adaptive"]["done"] and study["adaptive"]["seeds_used"]
    # Every comparison settled at the first look: seeds stopped at 3 of up to the planned maximum.
    assert set(study["adaptive"]["seeds_used"].values()) == {ask.MIN_SEEDS} and state["plan"]["section"]["seeds"]["max"] > ask.MIN_SEEDS
    assert study["runs_done"] == study["runs_total"] < state["plan"]["estimate_runs"]
    answer = (tmp_path / "wd" / "answer.txt").read_text()
    assert not answer.startswith("PARTIAL") and "an ImageNet start beats training from scratch" in answer
    assert "95% repeated CI" in answer.split("training the head only")[0]  # the study's comparisons: sequential CIs
    assert "training the head only vs fine-tuning every layer: no evidence" in answer  # ask's own: fixed-sample CIs
    assert "repeated CI" not in answer.split("training the head only")[1].split(".")[0]
    assert f"of at most {state['plan']['estimate_runs']}" in answer
    assert state["answer"]["recommended"]["values"]["init"] == "imagenet"
    assert "PARTIAL" not in capsys.readouterr().out


def test_dry_run_with_source_weights_probes_them_and_plans_a_third_init(tmp_path, fakes, capsys):
    import dataclasses

    from keras_tl import model as model_lib
    from keras_tl import probe
    from keras_tl import weights as weights_lib
    from keras_tl.study import plan as plan_lib

    folder = make_folder(str(tmp_path / "imgs"), per_class=6)
    # Source weights built cheaply: a randomly initialised backbone, saved as a run's export would save it.
    base = ask.base_recipe(folder, "efficientnet_lite0", {"data.image_size": [32, 32]}, [])
    model = model_lib.build_model(dataclasses.replace(base, model=dataclasses.replace(base.model, weights="none")), 2)
    source = weights_lib.save_backbone_weights(model, str(tmp_path / "survey.weights.h5"))

    def probes(recipe, src, workdir, log=print):
        # keras_tl.probe runs for real on the source weights ask passes (imagenet and none, ~10 s each,
        # are probed for real in the end-to-end test and faked here).
        out = probe.run_probe(recipe, [src], workdir, log=log)
        out["results"] = {**fake_probe(0.9, 0.55)(recipe, None, str(tmp_path / "fake"))["results"], **out["results"]}
        (tmp_path / "wd" / "probe" / "probe.json").write_text(json.dumps(out))
        return out

    fakes.setattr(ask, "run_probes", probes)
    state = ask.ask(_ask_args(folder, str(tmp_path / "wd"), "--budget", "2h", "--source", source, "--dry_run"))
    probed = json.loads((tmp_path / "wd" / "probe" / "probe.json").read_text())
    assert set(probed["results"]) == {"imagenet", "none", source}
    assert probed["results"][source]["weights"]["sha256"]  # keras_tl.probe loaded the file itself
    plan = plan_lib.load_plan(str(tmp_path / "wd" / "study.yaml"))
    inits = [a.values["init"] for a in plan.arms if a.values["data_fraction"] == 1.0 and a.values["freeze"] == "all"]
    assert {"label": "source", "weights": source} in inits and "imagenet" in inits and ask.SCRATCH in inits
    src_arm = next(a for a in plan.arms if a.values["init"] == {"label": "source", "weights": source})
    assert src_arm.recipe.model.weights == source and ask.is_scratch(plan.reference_of(src_arm).values["init"])
    assert plan.fingerprint() == state["plan"]["fingerprint"]
    assert "source" in capsys.readouterr().out


def test_run_study_deadline_leaves_an_adaptive_study_partial(tmp_path):
    base = _base(tmp_path)
    plan = ask.make_plan(base, ask.study_section(ask.candidate_levels(CAND, None)[0], {"min": 3, "max": 6}, (), 40))

    def slow(recipe, run_dir):
        time.sleep(0.3)
        return fake_train(recipe, run_dir)

    study = ask.run_study(plan, str(tmp_path / "s"), deadline=time.time() + 0.5, inner=slow, log=lambda s: None)
    assert study["runs_done"] < 6 and ask.is_partial(study)  # the first look needs 6 runs
    assert ask.partial_text(study).startswith("PARTIAL (the budget ran out before the stopping rule settled")


def test_engine_options_are_the_studys(tmp_path, fakes, capsys):
    from keras_tl import cli
    from keras_tl.study import engines

    fakes.setattr(ask, "run_probes", fake_probe(last_in=0.90, last_none=0.55))
    folder = make_folder(str(tmp_path / "imgs"), per_class=6)
    with pytest.raises(UserError) as refused:
        engines.check_options(engine="ray", in_process=True)
    assert cli.run(ask._main, _ask_args(folder, str(tmp_path / "wd"), "--engine", "ray", "--in_process")) == 2
    assert capsys.readouterr().err.strip().endswith(str(refused.value))  # one line, the study's own
    assert not (tmp_path / "wd").exists()  # refused before anything was written
    # Adaptive seeds run on any engine: the options reach the study unchanged.
    seen = {}

    def record(plan, study_dir, **kw):
        seen.update(kw)
        raise KeyboardInterrupt

    fakes.setattr(ask, "run_study", record)
    with pytest.raises(KeyboardInterrupt):
        ask.ask(_ask_args(folder, str(tmp_path / "wd"), "--budget", "30m", "--engine", "ray", "--ray_address", "auto",
                          "--runs_per_worker", "3"))
    assert (seen["engine"], seen["ray_address"], seen["runs_per_worker"]) == ("ray", "auto", 3)


def _ask_cmd(folder, budget):
    # MAX_SEEDS below MIN_SEEDS leaves ask one plan: the main question at FALLBACK_SEEDS fixed seeds (4 runs),
    # whatever the machine's speed; adaptive seeds are tested with fake runs above.
    return [sys.executable, "-c", "import sys; from keras_tl import ask; ask.MAX_SEEDS = 2; sys.exit(ask.main(sys.argv[1:]))",
            "--data", folder, "--backbone", "efficientnet_lite0", "--budget", budget, "--in_process", "--set", "data.batch_size=8"]


def test_ask_end_to_end_killed_and_resumed(tmp_path):
    folder = make_folder(str(tmp_path / "galaxies"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    budget = "10m"  # room for the smallest plan (2 arms x 2 seeds, ~80 s per run at load 7) at any load seen here
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
    assert recipe.model.weights == ("none" if ask.is_scratch(rec["values"]["init"]) else rec["values"]["init"])
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
    # The cost model checked by the runs themselves: their own wall time against the estimate for them
    # (start-up, tracing and evaluation measured: the old per-image-only estimate was ~2x low).
    cal = state["calibration"]
    assert cal["runs"] == study["runs_done"] and 0.5 < cal["ratio"] < 2.0, cal
