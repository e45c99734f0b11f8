"""Strategy and mixed-precision policy for a run, chosen once before any Keras object exists.

``setup(recipe)`` reads ``train.distribute``, ``train.precision`` and ``train.jit_compile``
and returns a :class:`Runtime`. Build the model, optimizer and metrics inside
``runtime.strategy.scope()`` afterwards; build them *after* ``setup`` so that layers pick
up the global dtype policy.

Loss scaling: under ``mixed_float16`` nothing extra is needed here. Keras 3's
``Model.compile(..., auto_scale_loss=True)`` (the default) wraps the optimizer in
``keras.optimizers.LossScaleOptimizer`` (dynamic loss scale) whenever the model's dtype
policy is ``mixed_float16`` (keras/src/trainers/trainer.py, ``Trainer.compile``). That is
why the model must be built after ``setup``: the check reads the model's own policy.
``mixed_bfloat16`` has float32's exponent range and needs no loss scaling.

Only the TPU and GPU paths cannot run on development machines; everything else (all
policies, ``MirroredStrategy`` over logical CPUs, multi-worker over localhost, XLA) is tested
on CPU.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import socket
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

from keras_tl.errors import UserError

POLICY_FOR_DEVICE = {"cpu": "float32", "gpu": "mixed_float16", "tpu": "mixed_bfloat16"}
TPU_CONNECT_TIMEOUT_S = 5.0


class DistributeError(UserError):
    """The requested strategy or device cannot be set up (no TPU, bad TF_CONFIG, ...)."""


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What ``setup`` chose. ``kind`` is the strategy actually built; ``is_chief`` is False
    only on non-chief multi-worker tasks (they must not write the run directory)."""

    strategy: Any
    policy: str
    device: str  # cpu | gpu | tpu
    num_replicas: int
    jit_compile: bool
    needs_static_shapes: bool
    kind: str = "default"  # default | mirrored | multi_worker | tpu
    is_chief: bool = True
    task: Optional[dict] = None  # {"type": ..., "index": ...} under multi_worker

    def describe(self) -> dict:
        """A JSON-able summary for run.json."""
        return {
            "strategy": self.kind,
            "strategy_class": type(self.strategy).__name__,
            "policy": self.policy,
            "device": self.device,
            "num_replicas": self.num_replicas,
            "jit_compile": self.jit_compile,
            "needs_static_shapes": self.needs_static_shapes,
            "is_chief": self.is_chief,
            "task": self.task,
        }


# --------------------------------------------------------------------------- helpers


def logical_cpus(n: int) -> None:
    """Split the physical CPU into ``n`` logical devices (for tests and benchmarks).

    Must run before TensorFlow initialises its devices, i.e. before any op, tensor,
    strategy or Keras model exists in the process; afterwards it raises RuntimeError.
    """
    import tensorflow as tf

    if n < 1:
        raise ValueError(f"logical_cpus: n must be >= 1, got {n}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError as e:
        raise RuntimeError(f"logical_cpus({n}) must run before TensorFlow initialises devices: {e}") from None


def parse_tf_config(text: Optional[str]) -> dict:
    """Parse and check the ``TF_CONFIG`` environment variable used by multi-worker training."""
    example = 'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\''
    if not text or not text.strip():
        raise DistributeError(f"train.distribute: multi_worker needs the TF_CONFIG environment variable, which is not set; set it on every worker, e.g. {example}")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({e.msg} at char {e.pos}); expected e.g. {example}") from None
    if not isinstance(cfg, dict):
        raise DistributeError(f"TF_CONFIG must be a JSON object with cluster and task, got {type(cfg).__name__}; e.g. {example}")
    cluster, task = cfg.get("cluster"), cfg.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise DistributeError(f"TF_CONFIG: 'cluster' must map job names to lists of host:port, got {cluster!r}; e.g. {example}")
    for job, hosts in cluster.items():
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and ":" in h for h in hosts):
            raise DistributeError(f"TF_CONFIG: cluster.{job} must be a non-empty list of 'host:port' strings, got {hosts!r}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise DistributeError(f"TF_CONFIG: 'task' must be {{\"type\": ..., \"index\": ...}}, got {task!r}")
    ttype, index = task["type"], task["index"]
    if ttype not in cluster:
        raise DistributeError(f"TF_CONFIG: task.type {ttype!r} is not a job in cluster ({', '.join(cluster)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[ttype]):
        raise DistributeError(f"TF_CONFIG: task.index {index!r} out of range for cluster.{ttype} ({len(cluster[ttype])} entries)")
    return cfg


def choose_kind(requested: str, *, tpu_configured: bool, num_gpus: int, tf_config_set: bool) -> str:
    """The strategy kind for ``train.distribute`` (resolves ``auto``; pure, for testing).

    ``auto``: a configured TPU → tpu; TF_CONFIG set → multi_worker (it also covers several
    GPUs per worker); more than one GPU → mirrored; otherwise default.
    """
    if requested != "auto":
        return requested
    if tpu_configured:
        return "tpu"
    if tf_config_set:
        return "multi_worker"
    if num_gpus > 1:
        return "mirrored"
    return "default"


def choose_policy(precision: str, device: str) -> str:
    """The Keras dtype policy for ``train.precision`` on ``device``."""
    policy = POLICY_FOR_DEVICE[device] if precision == "auto" else precision
    if device == "tpu" and policy == "mixed_float16":
        raise DistributeError("train.precision: mixed_float16 is not supported on TPU (TPUs compute in bfloat16); use mixed_bfloat16 or auto")
    return policy


def _tcp_reachable(host: str, port: int, timeout: float) -> Optional[str]:
    """None if host:port accepts a TCP connection within ``timeout``, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def _tpu_strategy(name: Optional[str], zone: Optional[str], project: Optional[str]):
    """Connect to and initialise the TPU system; any failure → DistributeError within seconds."""
    import tensorflow as tf

    how = "set train.tpu.name (--set train.tpu.name=local on a Cloud TPU VM, or the TPU node name with train.tpu.zone and train.tpu.project); without a TPU use train.distribute: default and no train.tpu.name"
    if not name:
        raise DistributeError(f"train.distribute: tpu but train.tpu.name is not set; {how}")
    if name == "local":  # zone/project describe a TPU node; a TPU VM's own chips need neither
        zone = project = None
    tried = f"TPU {name!r}" + (f" zone={zone}" if zone else "") + (f" project={project}" if project else "")
    if name == "local":
        # On a TPU VM the chips appear as /dev/accel* (v2-v4) or /dev/vfio/* (v5+); without
        # them initialize_tpu_system fails anyway, this just says why more plainly.
        if not glob.glob("/dev/accel*") and not glob.glob("/dev/vfio/[0-9]*"):
            raise DistributeError("train.tpu.name: local, but this machine has no TPU devices (/dev/accel*, /dev/vfio/*); run on a Cloud TPU VM or use train.distribute: auto")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name, zone=zone, project=project)
        master = resolver.master()
    except Exception as e:  # the resolver raises ValueError, URLError, HttpError, ImportError...
        raise DistributeError(f"cannot resolve {tried}: {type(e).__name__}: {' '.join(str(e).split())[:300]}; {how}") from None
    if master.startswith("grpc://"):
        # connect_to_cluster blocks indefinitely on an unreachable address: probe it first.
        url = urlparse(master)
        reason = _tcp_reachable(url.hostname or "", url.port or 8470, TPU_CONNECT_TIMEOUT_S)
        if reason:
            raise DistributeError(f"{tried} resolved to {master}, which is unreachable within {TPU_CONNECT_TIMEOUT_S:.0f}s ({reason}); check the TPU is READY (gcloud compute tpus list --zone ...) and firewalls, or {how}")
    try:
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    except Exception as e:
        first = " ".join(str(e).split())[:300]
        raise DistributeError(f"cannot initialise {tried} (master {master or 'local'}): {type(e).__name__}: {first}; {how}") from None
    return strategy


def _multi_worker_strategy():
    """MultiWorkerMirroredStrategy whose ``reduce`` accepts what Keras 3's ``fit`` passes it.

    Keras 3 (backend/tensorflow/trainer.py; keras-team/keras#20585) calls
    ``strategy.reduce("MEAN", (x, y), axis=None)`` on a whole batch structure to build the
    model, and ``strategy.reduce("MEAN", scalar_metric, axis=0)`` on each step's logs.
    MirroredStrategy tolerates both; MultiWorkerMirroredStrategy raises ("Attempt to convert
    a value (PerReplica...)", "Invalid reduction dimension 0 for input with 0 dimensions").
    This subclass reduces leaf by leaf and treats ``axis`` on a scalar as a plain cross-replica
    mean, which is what both calls mean. It stays an instance of MultiWorkerMirroredStrategy.
    """
    import tensorflow as tf

    class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            base = super(_MultiWorkerMirroredStrategy, self).reduce

            def leaf(v):
                ax = axis
                if ax is not None:
                    local = self.experimental_local_results(v)
                    if local and getattr(local[0], "shape", None) is not None and local[0].shape.rank == 0:
                        ax = None
                return base(reduce_op, v, ax)

            return tf.nest.map_structure(leaf, value)

    return _MultiWorkerMirroredStrategy()


def _mirrored_strategy(num_gpus: int):
    import tensorflow as tf

    if num_gpus:
        return tf.distribute.MirroredStrategy()
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    # Without GPUs MirroredStrategy() uses one CPU; name the logical CPUs so
    # logical_cpus(n) gives n replicas (tests, benchmarks).
    return tf.distribute.MirroredStrategy(devices=cpus) if len(cpus) > 1 else tf.distribute.MirroredStrategy()


# ------------------------------------------------------------------------------- API


def jit_for(recipe, device: str = "cpu") -> bool:
    """``train.jit_compile`` resolved as :func:`setup` resolves it: ``auto`` is XLA on TPU only (not
    under ``train.deterministic``). Cost measurements compile their models with this, not Keras's own
    ``auto``, which uses XLA on CPU too and made the first step of EfficientNet-Lite0 take 36-56 s."""
    t = recipe.train
    return bool(t.jit_compile if isinstance(t.jit_compile, bool) else (device == "tpu" and not t.deterministic))


def setup(recipe, *, tpu_flags: Optional[Mapping[str, Optional[str]]] = None) -> Runtime:
    """Choose the strategy, set the global Keras dtype policy and resolve jit_compile.

    Call before any Keras object exists. ``tpu_flags`` (keys name/zone/project; None values
    ignored) overrides ``recipe.train.tpu``. Raises DistributeError (a UserError) for a
    missing TPU, a missing or malformed TF_CONFIG, or an impossible precision.
    """
    import keras
    import tensorflow as tf

    t = recipe.train  # recipe.validate refuses jit_compile: true with deterministic: true
    tpu = {"name": t.tpu.name, "zone": t.tpu.zone, "project": t.tpu.project}
    for key, value in (tpu_flags or {}).items():
        if key not in tpu:
            raise DistributeError(f"tpu_flags: unknown key {key!r}; valid: name, zone, project")
        if value is not None:
            tpu[key] = value
    tf_config = os.environ.get("TF_CONFIG", "")
    num_gpus = len(tf.config.list_physical_devices("GPU"))
    kind = choose_kind(t.distribute, tpu_configured=bool(tpu["name"]), num_gpus=num_gpus, tf_config_set=bool(tf_config.strip()))

    is_chief, task = True, None
    if kind == "tpu":
        device = "tpu"
        policy = choose_policy(t.precision, device)  # before connecting: fail in milliseconds
        strategy = _tpu_strategy(**tpu)
    else:
        device = "gpu" if num_gpus else "cpu"
        policy = choose_policy(t.precision, device)
        if kind == "multi_worker":
            cfg = parse_tf_config(tf_config)
            task = {"type": cfg["task"]["type"], "index": cfg["task"]["index"]}
            jobs = cfg["cluster"]
            chief_job = "chief" if "chief" in jobs else "worker"
            is_chief = task["type"] == chief_job and task["index"] == 0
            try:
                strategy = _multi_worker_strategy()
            except (RuntimeError, ValueError) as e:
                raise DistributeError(f"cannot start multi-worker training from TF_CONFIG (task {task}): {' '.join(str(e).split())[:300]}; call setup before any TensorFlow op runs and check TF_CONFIG") from None
        elif kind == "mirrored":
            strategy = _mirrored_strategy(num_gpus)
        elif kind == "default":
            strategy = tf.distribute.get_strategy()
        else:
            raise DistributeError(f"train.distribute: unknown value {kind!r}; valid: auto, default, mirrored, multi_worker, tpu")

    keras.mixed_precision.set_global_policy(policy)
    # auto: XLA on TPU, except under op determinism, where Keras would drop it anyway (recorded as is).
    jit = jit_for(recipe, device)
    return Runtime(
        strategy=strategy,
        policy=policy,
        device=device,
        num_replicas=int(strategy.num_replicas_in_sync),
        jit_compile=bool(jit),
        needs_static_shapes=device == "tpu",
        kind=kind,
        is_chief=is_chief,
        task=task,
    )
