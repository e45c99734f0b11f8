"""Study runner: resume after interruption, shards, claims, concurrent workers (fake run_fn)."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from keras_tl.errors import UserError, WorkdirError
from keras_tl.study import plan as plan_lib
from keras_tl.study import runner

BASE = """
name: base
data: {source: synthetic_galaxies, synthetic: {count: 100}, image_size: [32, 32]}
model: {backbone: resnet50, weights: none}
train:
  phases:
    - {trainable: head, epochs: 1}
    - {trainable: all, epochs: 1}
"""


def make_plan(tmp_path, study="freeze: [head_only, from_conv4, all]\nseeds: 3\n"):
    (tmp_path / "base.yaml").write_text(BASE)
    path = tmp_path / "study.yaml"
    path.write_text("extends: base.yaml\nname: s\nstudy:\n" + "".join("  " + line + "\n" for line in study.splitlines()))
    return plan_lib.load_plan(str(path))


class FakeTrain:
    """Stands in for keras_tl.train.run: records calls, can fail on the n-th call."""

    def __init__(self, fail_on=None):
        self.calls, self.completed, self.fail_on = [], [], fail_on

    def __call__(self, recipe, workdir):
        self.calls.append(workdir)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            os.makedirs(workdir, exist_ok=True)  # a half-finished run dir, as a killed run leaves
            raise RuntimeError("simulated crash")
        self.completed.append(workdir)
        return {"test": {"accuracy": 0.5, "loss": 1.0}, "val": {"accuracy": 0.5}, "history": {}, "images_seen": 10,
                "wall_time": 0.1, "seed": recipe.seed}


def test_runs_every_run_once_and_writes_records(tmp_path):
    plan = make_plan(tmp_path)
    wd = str(tmp_path / "wd")
    fake = FakeTrain()
    res = runner.run_plan(plan, wd, run_fn=fake, log=lambda s: None)
    assert len(res.ran) == len(plan.runs) == 9
    assert sorted(fake.completed) == sorted(runner.run_dir(wd, r) for r in plan.runs)
    for r in plan.runs:
        m = runner.load_metrics(wd, r)
        assert m["seed"] == r.seed
    assert json.load(open(os.path.join(wd, "plan.json")))["fingerprint"] == plan.fingerprint()
    assert runner.status(plan, wd) == {"runs": 9, "done": 9, "running_or_stale": 0, "not_started": 0}


def test_resume_after_interruption_runs_each_exactly_once(tmp_path):
    plan = make_plan(tmp_path)
    wd = str(tmp_path / "wd")
    fake = FakeTrain(fail_on=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        runner.run_plan(plan, wd, run_fn=fake, log=lambda s: None)
    assert len(fake.completed) == 3
    with pytest.raises(WorkdirError, match="--resume"):
        runner.run_plan(plan, wd, run_fn=fake, log=lambda s: None)
    res = runner.run_plan(plan, wd, run_fn=fake, resume=True, log=lambda s: None)
    assert len(res.skipped_done) == 3 and len(res.ran) == 6
    assert sorted(fake.completed) == sorted(runner.run_dir(wd, r) for r in plan.runs)  # no duplicates, none lost
    assert fake.calls.count(fake.calls[3]) == 2  # the crashed run was retried
    again = FakeTrain()
    res = runner.run_plan(plan, wd, run_fn=again, resume=True, log=lambda s: None)
    assert again.calls == [] and len(res.skipped_done) == 9


def test_keep_going_records_failure_and_resume_retries(tmp_path):
    plan = make_plan(tmp_path)
    wd = str(tmp_path / "wd")
    fake = FakeTrain(fail_on=2)
    res = runner.run_plan(plan, wd, run_fn=fake, keep_going=True, log=lambda s: None)
    assert len(res.failed) == 1 and len(res.ran) == 8
    failed = [r for r in plan.runs if r.key == res.failed[0]][0]
    assert "simulated crash" in open(os.path.join(runner.run_dir(wd, failed), "study_error.txt")).read()
    res = runner.run_plan(plan, wd, run_fn=fake, resume=True, log=lambda s: None)
    assert res.ran == [failed.key]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 10])
def test_shards_partition_the_plan(tmp_path, count):
    plan = make_plan(tmp_path)
    shards = [runner.shard_runs(plan, i, count) for i in range(count)]
    keys = [r.key for s in shards for r in s]
    assert sorted(keys) == sorted(r.key for r in plan.runs)
    assert len(keys) == len(set(keys))
    assert [r.key for r in runner.shard_runs(plan, 0, count)] == [r.key for r in shards[0]]  # deterministic


def test_shards_share_a_workdir(tmp_path):
    plan = make_plan(tmp_path)
    wd = str(tmp_path / "wd")
    fakes = [FakeTrain(), FakeTrain()]
    for i in range(2):
        runner.run_plan(plan, wd, run_fn=fakes[i], shard=(i, 2), log=lambda s: None)
    assert sorted(fakes[0].completed + fakes[1].completed) == sorted(runner.run_dir(wd, r) for r in plan.runs)
    assert not set(fakes[0].completed) & set(fakes[1].completed)


def test_parse_shard():
    assert runner.parse_shard("1/4") == (1, 4) and runner.parse_shard(None) == (0, 1)
    for bad in ("4/4", "a/b", "1", "-1/2", "0/0"):
        with pytest.raises(UserError, match="--shard"):
            runner.parse_shard(bad)


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claims_stale_local_taken_over_on_resume_live_and_remote_respected(tmp_path):
    plan = make_plan(tmp_path, "freeze: [head_only, all]\nseeds: 1\n")
    wd = str(tmp_path / "wd")
    runner.write_plan(wd, plan)
    stale, remote = plan.runs
    with open(runner.claim_path(wd, stale), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": _dead_pid(), "time": time.time(), "nonce": "x"}, f)
    with open(runner.claim_path(wd, remote), "w") as f:
        json.dump({"host": "some-other-machine", "pid": 1, "time": time.time(), "nonce": "y"}, f)
    fake = FakeTrain()
    with pytest.raises(WorkdirError, match="already started"):
        runner.run_plan(plan, wd, run_fn=fake, log=lambda s: None)
    res = runner.run_plan(plan, wd, run_fn=fake, resume=True, log=lambda s: None)
    assert res.ran == [stale.key] and res.skipped_claimed == [remote.key]
    claim = json.load(open(runner.claim_path(wd, stale)))
    assert claim["pid"] == os.getpid() and claim["host"] == socket.gethostname()
    # A claim held by a live process on this host is never taken over.
    os.remove(runner.claim_path(wd, remote))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with open(runner.claim_path(wd, remote), "w") as f:
            json.dump({"host": socket.gethostname(), "pid": live.pid, "time": time.time(), "nonce": "z"}, f)
        res = runner.run_plan(plan, wd, run_fn=fake, resume=True, log=lambda s: None)
        assert res.skipped_claimed == [remote.key] and res.ran == []
    finally:
        live.kill()
        live.wait()


def test_other_plan_in_workdir_is_refused(tmp_path):
    plan = make_plan(tmp_path)
    wd = str(tmp_path / "wd")
    runner.write_plan(wd, plan)
    runner.write_plan(wd, plan)  # the same plan: fine
    other = make_plan(tmp_path, "freeze: [head_only, all]\nseeds: 3\n")
    with pytest.raises(WorkdirError, match="different study plan"):
        runner.run_plan(other, wd, run_fn=FakeTrain(), log=lambda s: None)


def _worker(plan_path, wd, log_path, barrier):
    plan = plan_lib.load_plan(plan_path)

    def run_fn(recipe, workdir):
        with open(log_path, "a") as f:  # O_APPEND: lines from both workers interleave whole
            f.write(workdir + "\n")
        time.sleep(0.02)
        return {"test": {"accuracy": 0.5}, "val": {}, "history": {}, "images_seen": 1, "wall_time": 0.0}

    barrier.wait()
    runner.run_plan(plan, wd, run_fn=run_fn, resume=True, log=lambda s: None)


def test_concurrent_workers_without_shards_never_duplicate(tmp_path):
    plan = make_plan(tmp_path, "freeze: [head_only, from_conv5, from_conv4, all]\nseeds: 4\n")
    wd, log = str(tmp_path / "wd"), str(tmp_path / "calls.log")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "study.yaml"), wd, log, barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    calls = open(log).read().split()
    assert sorted(calls) == sorted(runner.run_dir(wd, r) for r in plan.runs)


def test_unreadable_claim_is_stale_only_after_grace(tmp_path):
    plan = make_plan(tmp_path, "freeze: [head_only, all]\nseeds: 1\n")
    wd = str(tmp_path / "wd")
    runner.write_plan(wd, plan)
    run = plan.runs[0]
    path = runner.claim_path(wd, run)
    open(path, "w").close()  # created by O_EXCL, not yet written (or its writer was killed)
    fake = FakeTrain()
    res = runner.run_plan(plan, wd, run_fn=fake, resume=True, log=lambda s: None)
    assert res.skipped_claimed == [run.key]
    old = time.time() - 2 * runner.UNREADABLE_CLAIM_GRACE_S
    os.utime(path, (old, old))
    res = runner.run_plan(plan, wd, run_fn=fake, resume=True, log=lambda s: None)
    assert res.ran == [run.key]


def test_default_runs_each_training_run_in_a_fresh_process(tmp_path, monkeypatch):
    """Memory: TF keeps 320-350 MB per finished run in one process, so the default is a child per run.
    A child that fails (here: a folder that does not exist, exit 2) is an error naming its status."""
    import pytest

    from keras_tl import recipe as recipe_lib

    plan = make_plan(tmp_path)
    fake = FakeTrain()
    monkeypatch.setattr(runner, "run_in_subprocess", fake)
    runner.run_plan(plan, str(tmp_path / "wd"), log=lambda s: None)  # no run_fn: the default
    assert len(fake.completed) == len(plan.runs)
    monkeypatch.undo()
    bad = recipe_lib.from_dict({"name": "x", "data": {"source": "directory", "path": str(tmp_path / "missing")},
                                "model": {"backbone": "resnet50", "weights": "none"}})
    with pytest.raises(RuntimeError, match=r"exited with status 2 .*: error: .*missing.*full output: .*run\.log"):
        runner.run_in_subprocess(bad, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_shard_auto_reads_the_scheduler_index():
    k8s = {"JOB_COMPLETION_INDEX": "3"}
    assert runner.resolve_shard("auto/8", k8s) == (3, 8) and runner.resolve_shard("auto/8", k8s).owner == "kubernetes 3/8"
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}
    s = runner.resolve_shard("auto", slurm)
    assert s == (4, 8) and s.owner == "slurm 4/8"
    assert runner.resolve_shard("auto/8", slurm) == (4, 8)
    assert runner.resolve_shard("1/4", k8s) == (1, 4) and runner.resolve_shard("1/4", k8s).owner is None
    for text, env, why in [
        ("auto", k8s, "auto/N"),  # Kubernetes has no count in the environment
        ("auto", {}, "neither"),
        ("auto/8", {"JOB_COMPLETION_INDEX": "8"}, "outside"),
        ("auto/x", k8s, "auto/N"),
        ("auto/4", slurm, "disagrees"),
        ("auto", {**slurm, "SLURM_ARRAY_TASK_STEP": "2"}, "contiguous"),
        ("auto/8", {**k8s, **slurm}, "both"),
        ("auto/8", {"JOB_COMPLETION_INDEX": "x"}, "whole number"),
    ]:
        with pytest.raises(UserError, match=why):
            runner.resolve_shard(text, env)


def test_retried_scheduler_index_takes_over_its_own_claims_only(tmp_path):
    """A new pod with the same index (other host, pid maybe alive there) takes over that index's claims."""
    plan = make_plan(tmp_path, "freeze: [head_only, all]\nseeds: 2\n")
    wd = str(tmp_path / "wd")
    runner.write_plan(wd, plan)
    mine = runner.shard_runs(plan, 1, 2)
    for r in mine:  # the first attempt of index 1 died on another node mid-run
        with open(runner.claim_path(wd, r), "w") as f:
            json.dump({"host": "node-a", "pid": 7, "time": time.time(), "shard": "1/2", "nonce": "x", "owner": "kubernetes 1/2"}, f)
    other_slot = FakeTrain()  # index 0, or a hand-started worker on shard 1/2: never takes them
    res = runner.run_plan(plan, wd, run_fn=other_slot, shard=runner.Shard(1, 2), resume=True, log=lambda s: None)
    assert other_slot.calls == [] and len(res.skipped_claimed) == len(mine)
    res = runner.run_plan(plan, wd, run_fn=other_slot, shard=runner.Shard(1, 2, "slurm 1/2"), resume=True, log=lambda s: None)
    assert other_slot.calls == []
    retry = FakeTrain()
    res = runner.run_plan(plan, wd, run_fn=retry, shard=runner.resolve_shard("auto/2", {"JOB_COMPLETION_INDEX": "1"}),
                          resume=True, log=lambda s: None)
    assert sorted(res.ran) == sorted(r.key for r in mine) and len(retry.calls) == len(mine)
    assert all(json.load(open(runner.claim_path(wd, r)))["owner"] == "kubernetes 1/2" for r in mine)


def test_study_resources_are_checked_and_not_part_of_the_plan(tmp_path):
    plan = make_plan(tmp_path, "freeze: [head_only, all]\nseeds: 1\nresources: {gpus: 1, tpus: 4}\n")
    assert plan.study.resources == {"gpus": 1, "tpus": 4}
    assert plan.fingerprint() == make_plan(tmp_path, "freeze: [head_only, all]\nseeds: 1\n").fingerprint()
    for bad, why in [("{gpu: 1}", "unknown resource"), ("{gpus: -1}", ">= 0")]:
        with pytest.raises(UserError, match=why):
            make_plan(tmp_path, f"freeze: [head_only, all]\nseeds: 1\nresources: {bad}\n")
    from keras_tl.study import engines

    with pytest.raises(UserError, match="--engine"):
        engines.make_engine("dask")


def pid_run(recipe, run_dir):
    """Records the worker's pid; a run dir named in KILL_RUN dies like an out-of-memory worker."""
    os.makedirs(run_dir, exist_ok=True)
    if os.environ.get("KILL_RUN") and run_dir.endswith(os.environ["KILL_RUN"]):
        os.kill(os.getpid(), 9)
    return {"test": {"accuracy": 0.5}, "val": {"accuracy": 0.5}, "history": {}, "seed": recipe.seed, "pid": os.getpid()}


def test_local_warm_workers_run_k_runs_each_and_are_replaced(tmp_path, monkeypatch):
    from keras_tl.study import engines

    plan = make_plan(tmp_path, "freeze: [head_only, from_conv4, all]\nseeds: 2\n")  # 6 runs
    wd = str(tmp_path / "wd")
    monkeypatch.setenv("KILL_RUN", runner.run_dir(wd, plan.runs[4]))  # the spawned worker inherits it
    res = runner.run_plan(plan, wd, run_fn=pid_run, engine=engines.LocalEngine(runs_per_worker=2), keep_going=True,
                          log=lambda s: None)
    assert res.failed == [plan.runs[4].key] and len(res.ran) == 5
    pids = [runner.load_metrics(wd, r)["pid"] for r in plan.runs if r.key != plan.runs[4].key]
    assert os.getpid() not in pids
    assert pids[0] == pids[1] and pids[2] == pids[3] and len({pids[0], pids[2], pids[4]}) == 3  # K=2, then replaced
    assert "worker process" in open(os.path.join(runner.run_dir(wd, plan.runs[4]), "study_error.txt")).read()
    monkeypatch.delenv("KILL_RUN")
    res = runner.run_plan(plan, wd, run_fn=pid_run, engine=engines.LocalEngine(runs_per_worker=2), resume=True,
                          log=lambda s: None)
    assert res.ran == [plan.runs[4].key]
