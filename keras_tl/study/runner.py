"""Run a study plan in a shared workdir: resumable, shardable, each run executed once.

Layout of ``<workdir>``::

    plan.json                      the plan (arms, runs, fingerprint); every machine must agree on it
    runs/<arm_id>/seed<k>/         a normal keras_tl.train run dir (metrics.json, DONE, export/, ...)
    runs/<arm_id>/lr<j>/seed<k>/   the same, with a study.lr_grid
    claims/<arm_id>.seed<k>.claim  who runs it: {"host", "pid", "time", "shard", "nonce"[, "owner"]}; O_EXCL

A run is finished when its dir holds DONE and metrics.json. Before running, a worker
claims the run by creating its claim file with ``O_CREAT | O_EXCL``: exactly one
creator succeeds, so several workers (``--shard i/N`` or not) sharing a workdir never
run the same seed twice. A claim whose pid is dead on this host (a killed worker) is
stale; ``--resume`` takes it over by renaming it away first (rename is atomic, so only
one worker wins). Claims from other hosts are never taken over automatically: delete
the file if that machine is gone, with one exception: ``--shard auto`` (a Kubernetes
Indexed Job or a Slurm array) writes an ``owner`` such as ``"kubernetes 3/8"`` into its
claims, and a later attempt of the same index (a retried pod, a requeued array task, a
resubmitted array) takes over claims of that owner on ``--resume``: the scheduler runs
one attempt of an index at a time, and only that index ever claims the index's runs. A run that raises releases its claim, so ``--resume``
retries it; keras_tl.train resumes the unfinished run dir from its last finished phase.

gs:// workdirs are best effort: Cloud Storage has no O_EXCL through tf.io.gfile, so a
claim there is check-then-write and two workers starting the same run within a second
or so can both run it. Use disjoint ``--shard``s on GCS and it cannot happen.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import traceback
import uuid
from typing import Callable, Dict, List, Optional, Tuple

from keras_tl import fs
from keras_tl.errors import UserError, WorkdirError
from keras_tl.study.plan import Plan, Run, fingerprint_of

DONE = "DONE"
METRICS = "metrics.json"


def _remove(path: str) -> None:
    """Remove a claim file; a failure leaves it to the next attempt."""
    try:
        fs.remove(path)
    except Exception:  # noqa: BLE001 - OSError, or gfile's own errors on gs://
        pass


# --------------------------------------------------------------- sharding


def parse_shard(text: Optional[str]) -> Tuple[int, int]:
    """``"i/N"`` (0-based i) → (i, N); None → (0, 1)."""
    if text is None or text == "":
        return 0, 1
    try:
        i, n = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise UserError(f"--shard {text}: expected i/N with whole numbers, e.g. --shard 0/4 (shards are numbered 0..N-1)") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text}: need 0 <= i < N, e.g. --shard 0/{max(n, 2)} ... --shard {max(n, 2) - 1}/{max(n, 2)}")
    return i, n


class Shard(tuple):
    """``(index, count)`` plus ``owner``: the scheduler slot (``"slurm 3/8"``) for ``--shard auto``, else None."""

    owner: Optional[str]

    def __new__(cls, index: int, count: int, owner: Optional[str] = None):
        self = super().__new__(cls, (index, count))
        self.owner = owner
        return self


def _env_int(env, name: str, shard_text: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise UserError(f"--shard {shard_text}: {name}={env[name]!r} is not a whole number") from None


def resolve_shard(text: Optional[str], env=None) -> Shard:
    """``--shard`` → :class:`Shard`. ``auto`` / ``auto/N`` read the index from the batch scheduler:

    ``JOB_COMPLETION_INDEX`` (Kubernetes Indexed Job; N from ``auto/N``, the Job's ``completions``)
    or ``SLURM_ARRAY_TASK_ID`` (minus ``SLURM_ARRAY_TASK_MIN``; N from ``auto/N`` or
    ``SLURM_ARRAY_TASK_COUNT``). Anything else is :func:`parse_shard`.
    """
    text = "" if text is None else str(text)
    if text != "auto" and not text.startswith("auto/"):
        return Shard(*parse_shard(text or None))
    env = os.environ if env is None else env
    given = None
    if text.startswith("auto/"):
        try:
            given = int(text[5:])
        except ValueError:
            raise UserError(f"--shard {text}: expected auto or auto/N with N a whole number, e.g. --shard auto/8") from None
    k8s, slurm = "JOB_COMPLETION_INDEX" in env, "SLURM_ARRAY_TASK_ID" in env
    if k8s and slurm:
        raise UserError(f"--shard {text}: both JOB_COMPLETION_INDEX and SLURM_ARRAY_TASK_ID are set; give --shard i/N explicitly")
    if k8s:
        scheduler, index = "kubernetes", _env_int(env, "JOB_COMPLETION_INDEX", text)
        if given is None:
            raise UserError(f"--shard {text}: Kubernetes gives no task count; use --shard auto/N with N = the Job's completions")
        count = given
    elif slurm:
        scheduler = "slurm"
        if env.get("SLURM_ARRAY_TASK_STEP", "1") != "1":
            raise UserError(f"--shard {text}: SLURM_ARRAY_TASK_STEP={env['SLURM_ARRAY_TASK_STEP']}; use a contiguous array, e.g. sbatch --array=0-7")
        index = _env_int(env, "SLURM_ARRAY_TASK_ID", text) - (_env_int(env, "SLURM_ARRAY_TASK_MIN", text) if "SLURM_ARRAY_TASK_MIN" in env else 0)
        if given is None and "SLURM_ARRAY_TASK_COUNT" not in env:
            raise UserError(f"--shard {text}: SLURM_ARRAY_TASK_COUNT is not set; use --shard auto/N")
        count = given if given is not None else _env_int(env, "SLURM_ARRAY_TASK_COUNT", text)
        if given is not None and "SLURM_ARRAY_TASK_COUNT" in env and int(env["SLURM_ARRAY_TASK_COUNT"]) != given:
            raise UserError(f"--shard {text}: SLURM_ARRAY_TASK_COUNT={env['SLURM_ARRAY_TASK_COUNT']} disagrees with N={given}; "
                            "use --shard auto, or make the array as long as N")
    else:
        raise UserError(f"--shard {text}: neither JOB_COMPLETION_INDEX (Kubernetes Indexed Job) nor SLURM_ARRAY_TASK_ID "
                        "(sbatch --array) is set; outside a scheduler array give --shard i/N")
    if count < 1 or not 0 <= index < count:
        raise UserError(f"--shard {text}: {scheduler} index {index} is outside 0..{count - 1}; N must be the number of array tasks")
    return Shard(index, count, f"{scheduler} {index}/{count}")


def shard_runs(plan: Plan, index: int, count: int) -> List[Run]:
    """The runs of shard ``index`` of ``count``: round-robin over the (seed-major) plan order."""
    return [r for k, r in enumerate(plan.runs) if k % count == index]


# --------------------------------------------------------------- paths and status


def run_dir(workdir: str, run: Run) -> str:
    return os.path.join(workdir, "runs", *run.key.split("/"))


def claim_path(workdir: str, run: Run) -> str:
    return os.path.join(workdir, "claims", run.key.replace("/", ".") + ".claim")


def is_done(workdir: str, run: Run) -> bool:
    d = run_dir(workdir, run)
    return fs.exists(os.path.join(d, DONE)) and fs.exists(os.path.join(d, METRICS))


def load_metrics(workdir: str, run: Run) -> Optional[dict]:
    """The finished run's metrics dict, or None if the run is not finished."""
    if not is_done(workdir, run):
        return None
    return json.loads(fs.read_text(os.path.join(run_dir(workdir, run), METRICS)))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


UNREADABLE_CLAIM_GRACE_S = 60.0


def _read_claim(path: str) -> Optional[dict]:
    try:
        return json.loads(fs.read_text(path))
    except (OSError, ValueError):
        return None


def claim_is_stale(info: Optional[dict], path: Optional[str] = None, owner: Optional[str] = None) -> bool:
    """A claim from a dead process on this host, one still unreadable after a grace period, or
    (``owner``: we are scheduler slot ``owner``) one left by an earlier attempt of our slot."""
    if info is None:
        # Between O_EXCL create and the write, a live worker's claim is empty for a moment;
        # only a claim that stays unreadable (its writer was killed) is stale.
        return path is not None and fs.age_seconds(path) > UNREADABLE_CLAIM_GRACE_S
    if owner is not None and info.get("owner") == owner:
        # The scheduler runs one attempt of a slot at a time and only this slot claims its runs,
        # and this process runs one study run at a time: the claim is an earlier attempt's.
        return True
    if info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    if not isinstance(pid, int):
        return True
    # This process runs one study run at a time: a claim carrying our own pid that we are
    # not running now was left by an earlier attempt in this process.
    return pid == os.getpid() or not _pid_alive(pid)


def _claim_text(shard: str, owner: Optional[str] = None) -> Tuple[str, str]:
    nonce = uuid.uuid4().hex
    info = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "shard": shard, "nonce": nonce}
    if owner is not None:
        info["owner"] = owner
    return json.dumps(info) + "\n", nonce


def try_claim(workdir: str, run: Run, *, resume: bool, shard: str = "0/1", owner: Optional[str] = None) -> Tuple[bool, str]:
    """(True, nonce) if this worker now owns ``run``; (False, why) otherwise. ``owner``: see :class:`Shard`."""
    path = claim_path(workdir, run)
    text, nonce = _claim_text(shard, owner)
    if fs.create_exclusive(path, text):
        return True, nonce
    info = _read_claim(path)
    if not resume or not claim_is_stale(info, path, owner):
        who = f"{info.get('host')}:{info.get('pid')}" if info else "an unreadable claim"
        return False, f"claimed by {who}"
    if fs.is_remote(path):
        _remove(path)
        return (True, nonce) if fs.create_exclusive(path, text) else (False, "claimed concurrently")
    aside = f"{path}.stale-{nonce}"
    try:
        os.rename(path, aside)  # atomic: of several workers taking over, one wins
    except FileNotFoundError:
        return False, "claimed concurrently"
    moved = _read_claim(aside)
    if moved != info:
        # Between our read and the rename someone else replaced the stale claim: put theirs back.
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        _remove(aside)
        return False, "claimed concurrently"
    _remove(aside)
    if fs.create_exclusive(path, text):
        return True, nonce
    return False, "claimed concurrently"


def release(workdir: str, run: Run, nonce: str) -> None:
    """Remove our claim (after a failure) so a later --resume retries the run."""
    path = claim_path(workdir, run)
    info = _read_claim(path)
    if info and info.get("nonce") == nonce:
        _remove(path)


# --------------------------------------------------------------- plan file


def write_plan(workdir: str, plan: Plan) -> None:
    """Write plan.json, or check that the one there is this plan (same fingerprint)."""
    fs.makedirs(workdir)
    fs.makedirs(os.path.join(workdir, "runs"))
    fs.makedirs(os.path.join(workdir, "claims"))
    path = os.path.join(workdir, "plan.json")
    text = json.dumps({"fingerprint": plan.fingerprint(), **plan.to_json()}, indent=2) + "\n"
    if not fs.create_exclusive(path, text):
        check_plan(workdir, plan)


def check_plan(workdir: str, plan: Plan) -> bool:
    """WorkdirError unless ``workdir``'s plan.json (if any) is ``plan``; writes nothing. True if it exists."""
    path = os.path.join(workdir, "plan.json")
    if not fs.exists(path):
        return False
    old = None
    for _ in range(50):  # another worker may be between creating plan.json and writing it
        try:
            old = json.loads(fs.read_text(path))
            break
        except (OSError, ValueError):
            time.sleep(0.1)
    if old is None:
        raise WorkdirError(f"{path}: unreadable plan file; delete it if no worker is running this study")
    try:
        # Recomputed from the stored plan rather than trusting its "fingerprint" entry: plan.json
        # files written before the fingerprint ignored schema defaults still match their own study.
        old_fingerprint = fingerprint_of(old)
    except (UserError, KeyError, TypeError):
        old_fingerprint = old.get("fingerprint")
    if old_fingerprint != plan.fingerprint():
        raise WorkdirError(
            f"{workdir}: holds a different study plan (fingerprint {old_fingerprint} != {plan.fingerprint()}); "
            "use the same recipe and --set flags as the other workers, or choose another --workdir"
        )
    return True


# --------------------------------------------------------------- running


@dataclasses.dataclass
class RunnerResult:
    ran: List[str] = dataclasses.field(default_factory=list)
    skipped_done: List[str] = dataclasses.field(default_factory=list)
    skipped_claimed: List[str] = dataclasses.field(default_factory=list)
    failed: List[str] = dataclasses.field(default_factory=list)


def log_path(run_dir: str) -> str:
    """Where a study run's own output goes: ``<run dir>.log``, beside the run directory (keras_tl.train
    refuses a run directory that holds anything but a run)."""
    return run_dir.rstrip("/") + ".log"


def _last_error(path: str) -> str:
    """The child's ``error:`` line, or its last line, from its log."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


def run_in_subprocess(recipe, run_dir: str) -> dict:
    """One study run as ``python -m keras_tl.train`` in a fresh process; returns its metrics.json.

    The child's output (stdout and stderr) goes to :func:`log_path`, not the terminal.

    In one long-lived process TensorFlow/Keras keep memory from every finished run (measured:
    +320-350 MB per ResNet-50 run at 32 px even after ``keras.backend.clear_session()``; a 32-run study
    peaked at 19.2 GB RSS), so a 180-run study would run out of memory. A fresh process per run
    costs its start-up (measured launch → first step: 9 s idle, 28 s loaded) and frees everything.
    The child dies with the study (SIGKILL on parent death); a child killed by a signal takes the
    study down the same way, so its claim stays and ``--resume`` takes the run over, exactly as if
    the study itself had been killed.
    """
    import shutil
    import subprocess
    import sys
    import tempfile

    from keras_tl import recipe as recipe_lib

    tmp = tempfile.mkdtemp(prefix="keras_tl_run_")
    try:
        path = os.path.join(tmp, "recipe.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(recipe_lib.dump(recipe))
        cmd = [sys.executable, "-m", "keras_tl.train", "--recipe", path, "--workdir", run_dir]
        log = log_path(run_dir)
        fs.makedirs(os.path.dirname(log))
        from keras_tl.study import engines

        with open(log, "ab") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=engines.die_with_parent if os.name == "posix" else None).returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if rc == 130:  # the child's own Ctrl-C line (keras_tl.cli): the study was interrupted with it
        raise KeyboardInterrupt
    if rc < 0:
        os.kill(os.getpid(), -rc)  # SIGKILL/SIGTERM end the study; SIGINT raises KeyboardInterrupt here
        raise RuntimeError(f"keras_tl.train was killed by signal {-rc}")  # only if the signal was ignored
    if rc != 0:
        raise RuntimeError(f"keras_tl.train exited with status {rc} for {run_dir}: {_last_error(log)} (full output: {log})")
    path = os.path.join(run_dir, METRICS)
    if not fs.exists(path):
        raise RuntimeError(f"{run_dir}: keras_tl.train finished without {METRICS}")
    return json.loads(fs.read_text(path))


def run_in_process(recipe, run_dir: str) -> dict:
    """One study run inside this process (``--in_process``): no start-up cost, but memory grows per run."""
    from keras_tl import train

    return train.run(recipe, run_dir)


FEATURES = "features"


def with_feature_store(recipe, workdir: str):
    """``recipe`` with ``train.feature_store`` = ``<workdir>/features`` (absolute), unless it names one already.

    Head-only phases of runs with the same frozen backbone and inputs then extract their
    features once per study (:mod:`keras_tl.feature_store`).
    """
    if recipe.train.feature_store:
        return recipe
    store = os.path.join(workdir if fs.is_remote(workdir) else os.path.abspath(workdir), FEATURES)
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, feature_store=store))


def _record_failure(d: str, error: BaseException) -> None:
    fs.makedirs(d)
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    fs.write_text(os.path.join(d, "study_error.txt"), text)


def _record_success(d: str, metrics: dict) -> None:
    # keras_tl.train.run writes both files itself; a custom run_fn may not.
    fs.makedirs(d)
    if not fs.exists(os.path.join(d, METRICS)):
        fs.write_text(os.path.join(d, METRICS), json.dumps(metrics, indent=2, default=float) + "\n")
    if not fs.exists(os.path.join(d, DONE)):
        fs.write_text(os.path.join(d, DONE), time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")


def _refuse_started(workdir: str, mine: List[Run]) -> None:
    """Without --resume, a workdir where this shard's runs were already started is refused."""
    started = [r.key for r in mine if fs.exists(claim_path(workdir, r)) or fs.exists(run_dir(workdir, r))]
    if started:
        raise WorkdirError(
            f"{workdir}: {len(started)} runs of this study were already started here (e.g. {started[0]}); pass --resume to continue, "
            "or choose another --workdir"
        )


def run_plan(
    plan: Plan,
    workdir: str,
    *,
    run_fn: Optional[Callable[..., dict]] = None,
    shard: Tuple[int, int] = (0, 1),  # or a Shard from resolve_shard (--shard auto)
    resume: bool = False,
    keep_going: bool = False,
    log: Callable[[str], None] = print,
    runs: Optional[List[Run]] = None,
    engine=None,
) -> RunnerResult:
    """Run this worker's share of ``plan`` in ``workdir`` on ``engine`` (:mod:`keras_tl.study.engines`;
    default local, one run at a time). ``run_fn(recipe, run_dir) -> metrics`` defaults to
    :func:`run_in_subprocess`, or :func:`run_in_process` inside engine workers. A failing run releases
    its claim and re-raises (``keep_going``: logs and continues)."""
    from keras_tl.study import engines

    engine = engine or engines.LocalEngine()
    run_fn = run_fn or (run_in_process if engine.in_worker else run_in_subprocess)
    write_plan(workdir, plan)
    index, count = shard
    owner = getattr(shard, "owner", None)
    # ``runs``: an adaptive study's round, already split between shards (keras_tl.study.adaptive).
    mine = shard_runs(plan, index, count) if runs is None else list(runs)
    shard_text = f"{index}/{count}"
    if not resume:
        _refuse_started(workdir, mine)
    result = RunnerResult()
    by_key = {r.key: r for r in mine}
    in_flight: Dict[str, engines.Job] = {}
    started: Dict[str, Tuple[int, float]] = {}  # run key -> (its number in this shard, start time)
    t_study, todo = time.time(), sum(1 for r in mine if not is_done(workdir, r))

    def claimed_jobs():
        """This shard's unfinished runs, each claimed as the engine takes it."""
        for n, run in enumerate(mine, 1):
            if is_done(workdir, run):
                result.skipped_done.append(run.key)
                continue
            ok, why = try_claim(workdir, run, resume=resume, shard=shard_text, owner=owner)
            if not ok:
                if is_done(workdir, run):
                    result.skipped_done.append(run.key)
                else:
                    log(f"study: skip {run.key}: {why}")
                    result.skipped_claimed.append(run.key)
                continue
            if is_done(workdir, run):  # finished by another worker between our check and our claim
                result.skipped_done.append(run.key)
                continue
            d = run_dir(workdir, run)
            fs.makedirs(os.path.dirname(d))
            started[run.key] = (n, time.time())
            job = engines.Job(run.key, with_feature_store(run.recipe, workdir), d, why)
            in_flight[run.key] = job
            yield job

    try:
        for job, metrics, error in engine.execute(claimed_jobs(), run_fn):
            run, d = by_key[job.key], job.run_dir
            del in_flight[job.key]
            if error is not None:
                release(workdir, run, job.nonce)
                result.failed.append(run.key)
                if not keep_going:
                    raise error
                log(f"study: {run.key} failed: {type(error).__name__}: {error}")
                _record_failure(d, error)
                continue
            _record_success(d, metrics)
            result.ran.append(run.key)
            n, t_run = started[run.key]
            left = max(0, todo - len(result.ran) - len(result.failed) - len(result.skipped_claimed))
            log(run_line(plan, run, metrics, n, len(mine), time.time() - t_run, (time.time() - t_study) / len(result.ran) * left))
    except BaseException:
        _release_in_flight(workdir, by_key, in_flight, result)
        raise
    return result


def _release_in_flight(workdir: str, by_key: Dict[str, Run], in_flight: dict, result: RunnerResult) -> None:
    """A run that raised, or Ctrl-C: release what this worker still holds so --resume retries it."""
    for job in in_flight.values():
        release(workdir, by_key[job.key], job.nonce)
        if job.key not in result.failed:
            result.failed.append(job.key)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_line(plan: Plan, run: Run, metrics: dict, n: int, total: int, elapsed: float, eta: float) -> str:
    """One line per finished run: arm, seed, lr, the study's metric, its time, the study's ETA."""
    metric = plan.study.metric
    split = metrics.get("final_split") or ("test" if metrics.get("test") else "val")
    value = (metrics.get(split) or {}).get(metric)
    shown = f"{split} {metric} {value:.3f}" if isinstance(value, (int, float)) else f"{split} {metric} n/a"
    lr = f" lr {run.lr:g}" if run.lr is not None else ""
    return (f"study: [{n}/{total}] {run.arm_id} seed {run.seed}{lr}: {shown}, {_duration(elapsed)}; "
            f"study ETA ~{_duration(eta)}")


def collect(plan: Plan, workdir: str) -> Dict[str, dict]:
    """run key → metrics dict, for every finished run of the plan."""
    out = {}
    for run in plan.runs:
        m = load_metrics(workdir, run)
        if m is not None:
            out[run.key] = m
    return out


def status(plan: Plan, workdir: str) -> Dict[str, int]:
    done = sum(1 for r in plan.runs if is_done(workdir, r))
    claimed = sum(1 for r in plan.runs if not is_done(workdir, r) and fs.exists(claim_path(workdir, r)))
    return {"runs": len(plan.runs), "done": done, "running_or_stale": claimed, "not_started": len(plan.runs) - done - claimed}
