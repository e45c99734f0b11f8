"""Where a study's runs execute: one interface, a local and a Ray implementation.

:func:`keras_tl.study.runner.run_plan` owns the study logic (plan file, claims, resume,
DONE/metrics records, keep_going); an engine only executes claimed jobs::

    for job, metrics, error in engine.execute(jobs, run_fn):
        ...

``jobs`` is a lazy iterator: taking the next job claims its run. :class:`LocalEngine`
takes one job at a time (the other workers sharing the workdir get the rest);
:class:`RayEngine` takes them all, submits each as a Ray task and yields results as they
finish. An engine yields ``(job, metrics, None)`` for a run that finished and
``(job, None, exception)`` for one that failed; it never swallows KeyboardInterrupt.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

from keras_tl.errors import UserError

RunFn = Callable[[Any, str], dict]


@dataclasses.dataclass
class Job:
    """One claimed run: what to train (``recipe``) and where (``run_dir``)."""

    key: str
    recipe: Any
    run_dir: str
    nonce: str  # the claim's nonce, to release it on failure


Outcome = Tuple[Job, Optional[dict], Optional[BaseException]]


def _worker_init() -> None:
    """In a pooled worker: die with the study (SIGKILL on parent death, Linux), as a run's child does."""

    die_with_parent()


class LocalEngine:
    """Runs on this machine, one after another.

    ``runs_per_worker`` 1: each run is ``run_fn`` here (by default :func:`runner.run_in_subprocess`,
    a fresh child per run). K > 1: a warm worker process (spawned, so no TensorFlow state from this
    process) runs K runs in a row in-process, then is replaced: start-up (importing TensorFlow,
    building the data) is paid once per K runs, and the memory a worker accumulates stays bounded.
    """

    name = "local"

    def __init__(self, runs_per_worker: int = 1):
        if runs_per_worker < 1:
            raise UserError(f"--runs_per_worker {runs_per_worker}: must be >= 1")
        self.runs_per_worker = runs_per_worker

    @property
    def in_worker(self) -> bool:
        """True if runs execute in a worker process already (the default run_fn is then in-process)."""
        return self.runs_per_worker > 1

    def _pool(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   max_tasks_per_child=self.runs_per_worker, initializer=_worker_init)

    def execute(self, jobs: Iterable[Job], run_fn: RunFn) -> Iterator[Outcome]:
        if not self.in_worker:
            for job in jobs:
                try:
                    metrics = run_fn(job.recipe, job.run_dir)
                except Exception as e:  # noqa: BLE001 - handed to run_plan (release, keep_going)
                    yield job, None, e
                    continue
                yield job, metrics, None
            return
        from concurrent.futures.process import BrokenProcessPool

        pool = self._pool()
        try:
            for job in jobs:
                try:
                    metrics = pool.submit(run_fn, job.recipe, job.run_dir).result()
                except BrokenProcessPool as e:  # the worker died (killed, out of memory): a fresh one for the next run
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._pool()
                    yield job, None, RuntimeError(f"the worker process running {job.key} died: {e}")
                    continue
                except Exception as e:  # noqa: BLE001 - the run raised in the worker
                    yield job, None, e
                    continue
                yield job, metrics, None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# Ray's names for the study.resources keys.
def ray_options(resources: Dict[str, float]) -> Dict[str, Any]:
    """``study.resources`` → ``ray.remote`` options: num_cpus, num_gpus, memory, {"TPU": n}."""
    opts: Dict[str, Any] = {"num_cpus": resources.get("cpus", 1)}
    if resources.get("gpus"):
        opts["num_gpus"] = resources["gpus"]
    if resources.get("memory_gb"):
        opts["memory"] = int(resources["memory_gb"] * 2**30)
    if resources.get("tpus"):
        opts["resources"] = {"TPU": resources["tpus"]}
    return opts


def _ray_task(run_fn: RunFn, recipe, run_dir: str) -> dict:
    """The body of one Ray task: one study run on whichever worker Ray picked."""
    return run_fn(recipe, run_dir)


class RayEngine:
    """Each run is a Ray task; Ray places it by ``resources``, retries it if its worker or node dies.

    ``address``: None → ``ray.init()`` (connects to ``RAY_ADDRESS`` if set, else starts a local
    cluster); ``"auto"`` → the running cluster on this machine; or ``ray://host:10001``.
    ``runs_per_worker`` is Ray's ``max_calls``: a worker process is replaced after that many runs,
    which bounds the memory a long-lived TensorFlow process accumulates. ``max_retries`` counts
    retries after a worker or node died; a run that *raises* is not retried (it would raise again).
    The workdir must be shared by every node (NFS, a mounted volume, gs://).
    """

    name = "ray"
    in_worker = True

    def __init__(self, address: Optional[str] = None, resources: Optional[Dict[str, float]] = None,
                 runs_per_worker: int = 1, max_retries: int = 3, init_kwargs: Optional[dict] = None):
        if runs_per_worker < 1:
            raise UserError(f"--runs_per_worker {runs_per_worker}: must be >= 1")
        if max_retries < 0:
            raise UserError(f"max_retries {max_retries}: must be >= 0")
        self.address, self.resources = address, dict(resources or {})
        self.runs_per_worker, self.max_retries = runs_per_worker, max_retries
        self.init_kwargs = dict(init_kwargs or {})

    def _init(self):
        try:
            import ray
        except ImportError:
            raise UserError('--engine ray: Ray is not installed; pip install "keras_tl[ray]"') from None
        if not ray.is_initialized():
            # Children (keras_tl.train) and Ray workers need this checkout's keras_tl, as the driver has.
            env = {k: os.environ[k] for k in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL") if k in os.environ}
            kwargs = {"runtime_env": {"env_vars": env}} if env else {}
            kwargs.update(self.init_kwargs)
            ray.init(address=self.address, **kwargs)
        return ray

    def execute(self, jobs: Iterable[Job], run_fn: RunFn) -> Iterator[Outcome]:
        ray = self._init()
        task = ray.remote(max_calls=self.runs_per_worker, max_retries=self.max_retries, retry_exceptions=False,
                          **ray_options(self.resources))(_ray_task)
        fn_ref = ray.put(run_fn)
        pending = {}
        for job in jobs:
            pending[task.remote(fn_ref, job.recipe, job.run_dir)] = job
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ready[0])
                try:
                    metrics = ray.get(ready[0])
                except Exception as e:  # noqa: BLE001 - RayTaskError (the run raised) or retries exhausted
                    yield job, None, e
                    continue
                yield job, metrics, None
        finally:
            for ref in pending:  # the driver stops early (a failure without keep_going, Ctrl-C)
                ray.cancel(ref, force=True)


def check_options(*, engine: str = "local", runs_per_worker: int = 1, in_process: bool = False) -> None:
    """Refuse, before anything runs, the engine options a study cannot run with (keras_tl.study and
    keras_tl.ask both call this, so a combination one accepts the other accepts). Adaptive and fixed
    seeds run on every engine."""
    if in_process and (engine != "local" or runs_per_worker > 1):
        raise UserError("--in_process is for --engine local with --runs_per_worker 1 (workers run runs in-process already); drop one")


def make_engine(name: str, *, resources: Optional[Dict[str, float]] = None, address: Optional[str] = None,
                runs_per_worker: int = 1):
    """``--engine`` → an engine."""
    if name == "local":
        if address:
            raise UserError("--ray_address is for --engine ray; drop it or add --engine ray")
        return LocalEngine(runs_per_worker=runs_per_worker)
    if name == "ray":
        return RayEngine(address=address, resources=resources, runs_per_worker=runs_per_worker)
    raise UserError(f"--engine {name}: expected local or ray")


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL me if the study process dies (Linux; elsewhere a no-op)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the child may outlive a killed study
        pass
