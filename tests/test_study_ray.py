"""--engine ray on a local Ray (num_cpus=2): a study finishes; a worker killed mid-run is retried (fake runs)."""

import os
import signal
import sys

import pytest

from keras_tl.study import engines, runner
from test_study_runner import make_plan  # tests/ is on sys.path (pytest's rootdir-relative import)

ray = pytest.importorskip("ray")  # the optional extra keras_tl[ray]; CI installs it (.ci/run: .[test,ray])


@pytest.fixture(scope="module")
def local_ray():
    # Fake run functions live in this test module: Ray workers cannot import it by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def fake_run(recipe, run_dir):
    """A run that records each attempt (pid) in its run dir; a marker file makes its first attempt die."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "attempts"), "a") as f:
        f.write(f"{os.getpid()}\n")
    arm_dir = os.path.dirname(run_dir)  # <tmp>/wd/runs/<arm_id>/seed<k>
    kill_marker = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(arm_dir))), "kill_" + os.path.basename(arm_dir))
    if os.path.exists(kill_marker):
        os.remove(kill_marker)
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-run, as on a lost node
    return {"test": {"accuracy": 0.5, "loss": 1.0}, "val": {"accuracy": 0.5}, "history": {}, "images_seen": 10,
            "wall_time": 0.1, "seed": recipe.seed, "pid": os.getpid()}


def test_ray_study_finishes_and_a_killed_worker_is_retried(tmp_path, local_ray):
    plan = make_plan(tmp_path, "freeze: [head_only, all]\nseeds: 2\n")
    wd = tmp_path / "wd"
    victim = plan.runs[1]
    (tmp_path / f"kill_{victim.arm_id}").write_text("")  # that arm's first attempt to run is killed
    engine = engines.RayEngine(runs_per_worker=2, max_retries=2)
    res = runner.run_plan(plan, str(wd), run_fn=fake_run, engine=engine, log=lambda s: None)
    assert sorted(res.ran) == sorted(r.key for r in plan.runs) and not res.failed
    dirs = sorted(str(p.parent) for p in wd.glob("runs/**/DONE"))
    assert dirs == sorted(runner.run_dir(str(wd), r) for r in plan.runs)  # one dir per run, no duplicates
    attempts = {r.key: open(os.path.join(runner.run_dir(str(wd), r), "attempts")).read().split() for r in plan.runs}
    assert sum(len(a) for a in attempts.values()) == len(plan.runs) + 1  # exactly one retry
    assert max(len(a) for a in attempts.values()) == 2
    assert not (tmp_path / f"kill_{victim.arm_id}").exists()
    # --resume: nothing left to run
    res = runner.run_plan(plan, str(wd), run_fn=fake_run, engine=engine, resume=True, log=lambda s: None)
    assert res.ran == [] and len(res.skipped_done) == len(plan.runs)


def test_ray_run_that_raises_is_not_retried_and_releases_its_claim(tmp_path, local_ray):
    plan = make_plan(tmp_path, "freeze: [head_only]\nseeds: 1\n")
    wd = str(tmp_path / "wd")
    engine = engines.RayEngine(max_retries=2)
    res = runner.run_plan(plan, wd, run_fn=_raises, engine=engine, keep_going=True, log=lambda s: None)
    assert res.failed == [plan.runs[0].key]
    assert "bad recipe" in open(os.path.join(runner.run_dir(wd, plan.runs[0]), "study_error.txt")).read()
    assert not os.path.exists(runner.claim_path(wd, plan.runs[0]))  # --resume retries it
    assert open(os.path.join(runner.run_dir(wd, plan.runs[0]), "attempts")).read().count("\n") == 1


def _raises(recipe, run_dir):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "attempts"), "a") as f:
        f.write("x\n")
    raise ValueError("bad recipe")


def test_resources_map_to_ray_options():
    assert engines.ray_options({"gpus": 1, "tpus": 4, "memory_gb": 2}) == {
        "num_cpus": 1, "num_gpus": 1, "memory": 2 * 2**30, "resources": {"TPU": 4}}


def effect_run(recipe, run_dir):
    """Accuracy 0.5 + 0.2 for arm ``all`` (+ seed noise), so adaptive seeds settle it early."""
    import numpy as np

    os.makedirs(run_dir, exist_ok=True)
    arm = os.path.basename(os.path.dirname(run_dir))
    rng = np.random.default_rng([recipe.seed, len(arm)])
    acc = 0.5 + (0.2 if arm.startswith("all") else 0.0) + rng.normal(0, 0.03)
    return {"test": {"accuracy": acc, "loss": 1.0}, "val": {"accuracy": acc}, "history": {}, "images_seen": 10,
            "wall_time": 1.0, "seed": recipe.seed, "pid": os.getpid()}


def test_adaptive_seeds_on_ray_match_the_local_engine(tmp_path, local_ray):
    """Adaptive rounds run on Ray (a whole round in parallel) and make the same decisions as locally."""
    from keras_tl.study import adaptive, sequential

    design = sequential.Design(sequential.schedule(3, 8))
    plan = make_plan(tmp_path, "freeze: [head_only, from_conv4, all]\nseeds: 8\nbaseline: {freeze: head_only}\n")
    done = {}
    for name, engine in [("local", None), ("ray", engines.RayEngine(runs_per_worker=4))]:
        wd = str(tmp_path / name)
        adaptive.run_adaptive(plan, wd, design=design, run_fn=effect_run, engine=engine, log=lambda s: None)
        state, _, _ = adaptive.study_state(plan, runner.collect(plan, wd), design)
        done[name] = (sorted(str(p.relative_to(wd)) for p in (tmp_path / name).glob("runs/**/DONE")),
                      {k: (t.status, t.n) for k, t in state.tracks.items()})
    assert done["ray"] == done["local"]
    statuses = {plan.arm(k).values["freeze"]: v for k, v in done["ray"][1].items()}
    assert statuses["all"][0] == sequential.BETTER and statuses["all"][1] < 8  # settled before the last seed
    assert len(done["ray"][0]) < len(plan.runs)


def test_ray_with_a_retried_scheduler_index_takes_over_its_claims(tmp_path, local_ray):
    """--engine ray --shard auto/2 in a retried Kubernetes pod: the index's stale claims (another node)
    are taken over, the other index's runs are left alone."""
    import json
    import time

    plan = make_plan(tmp_path, "freeze: [head_only, all]\nseeds: 2\n")
    wd = str(tmp_path / "wd")
    runner.write_plan(wd, plan)
    mine = runner.shard_runs(plan, 1, 2)
    for r in mine:  # index 1's first pod died on node-a mid-run
        with open(runner.claim_path(wd, r), "w") as f:
            json.dump({"host": "node-a", "pid": 7, "time": time.time(), "shard": "1/2", "nonce": "x",
                       "owner": "kubernetes 1/2"}, f)
    shard = runner.resolve_shard("auto/2", {"JOB_COMPLETION_INDEX": "1"})
    res = runner.run_plan(plan, wd, run_fn=effect_run, engine=engines.RayEngine(), shard=shard, resume=True,
                          log=lambda s: None)
    assert sorted(res.ran) == sorted(r.key for r in mine) and not res.failed
    assert sorted(str(p.parent) for p in (tmp_path / "wd").glob("runs/**/DONE")) == sorted(runner.run_dir(wd, r) for r in mine)


def test_ask_deadline_stops_a_ray_study_as_partial(tmp_path, local_ray):
    """ask's deadline on Ray: OutOfBudget, raised inside the task, reaches the driver wrapped in Ray's
    task error; ask unwraps it, stops the study and answers PARTIAL, with no run started or retried."""
    from keras_tl import ask

    plan = make_plan(tmp_path, "freeze: [head_only, all]\nseeds: 2\n")
    study = ask.run_study(plan, str(tmp_path / "s"), engine="ray", deadline=0.0, run_seconds=1.0, inner=effect_run,
                          log=lambda s: None)
    assert study["runs_done"] == 0 and ask.is_partial(study)
    assert not list((tmp_path / "s").glob("runs/*/seed*/attempts"))  # no run started, none retried
