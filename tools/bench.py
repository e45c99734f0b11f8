"""keras_tl performance benchmarks: every figure of the performance issue, as ratios measured side by side.

    python tools/bench.py --quick --out bench.json     # < 5 minutes on 2 cores
    python tools/bench.py --out bench.json             # the full run, < 15 minutes
    python tools/bench.py --sections overhead,cache    # a subset

The machine is shared and noisy, so each target is a ratio of two things measured in the same
process, interleaved (A B A B ...), with the median and the spread (min..max) of the per-pair
ratios. Sections (JSON keys under "sections"; headline figures under "summary"):

- overhead: keras_tl's training path (build_model, freeze.apply_phase, the trainer's loss,
  metrics, optimizer, compile flags and callbacks, keras_tl.data input) ÷ a hand-written
  keras.applications backbone + head compiled and fit by hand on the same tf.data pipeline;
  steady-state images/s (first fit call, with tracing, excluded).
- headroom: the input pipeline alone (tools/bench_input.py: JPEG decode + augment) ÷ ResNet101
  training images/s at 64 and 224 px.
- cache: the frozen-backbone fast path: wall time of a 10-epoch head-only phase through
  keras_tl.train.run with train.feature_cache auto vs off (cache_speedup), and both final val
  accuracies; then two runs sharing a train.feature_store, as a study's runs do: reuse_speedup =
  the naive phase ÷ the second run's phase on stored features, and whether its history and val
  accuracy equal the run that extracted its own (reuse_metrics_identical).
- probe: tools/bench_probe.py's all-stage probe cost ÷ one forward pass (if that tool exists).
- utilisation: achieved FLOP/s of a ResNet101 training step (3 × analytic forward FLOPs) ÷ a
  large float32 matmul's FLOP/s, interleaved in one process; XLA and batch-size variants.
- memory: peak RSS (wait4 ru_maxrss) of a ResNet101 64 px, batch 32 run of the trainer CLI in a
  subprocess, and the sizes of the in-memory caches that run holds.
- study: a study of 8 runs (2 phases; quick: MobileNetV3-Small, full: ResNet-50; each run >= 20 s of
  its own work on 2 cores), run by
  ``python -m keras_tl.study`` as today (a fresh process per run) and with warm workers
  (``--runs_per_worker K``): study_overhead_ratio = study wall ÷ the sum over runs of each run's
  own fit + evaluate + export seconds (run.json wall_time_s), and the peak RSS of each (wait4 over
  the study and its workers), whose difference ÷ (K - 1) is the memory a worker keeps per run.
- startup: seconds from launching ``python -m keras_tl.train --recipe recipes/smoke.yaml`` to
  the end of its first training step (the trainer's KERAS_TL_FAULT crash point kills it there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
SECTIONS = ("overhead", "headroom", "cache", "probe", "utilisation", "memory", "startup", "study")

# Sizes per mode. "tiny" exists for the test suite (seconds, not meaningful figures).
PLANS = {
    "tiny": dict(overhead=dict(backbone="mobilenetv3small", size=32, batch=4, steps=2, rounds=1, count=40),
                 headroom=dict(sizes=(32,), batch={32: 8}, steps=2, images=32),
                 utilisation=dict(backbone="resnet50", size=32, batch=8, steps=2, rounds=1, matmul=512, variants=()),
                 cache=dict(backbone="resnet50", size=32, count=60, epochs=2, batch=16),
                 memory=dict(backbone="resnet50", size=32, batch=8, steps=1, count=40, export=False),
                 startup=dict(variants=("default",), size=32),
                 study=dict(backbone="mobilenetv3small", seeds=1, size=32, count=40, epochs=1, runs_per_worker=2, variants=("warm",))),
    "quick": dict(overhead=dict(backbone="resnet50", size=64, batch=32, steps=6, rounds=2, count=256),
                  headroom=dict(sizes=(64,), batch={64: 32}, steps=3, images=128),
                  utilisation=dict(backbone="resnet50", size=64, batch=32, steps=4, rounds=2, matmul=2048, variants=()),
                  cache=dict(backbone="resnet50", size=64, count=600, epochs=10, batch=32),
                  memory=dict(backbone="resnet101", size=64, batch=32, steps=2, count=128, export=False),
                  startup=dict(variants=("default",), size=64),
                  study=dict(backbone="mobilenetv3small", seeds=4, size=32, count=200, epochs=1, runs_per_worker=4,
                             variants=("fresh", "warm"))),
    "full": dict(overhead=dict(backbone="resnet101", size=64, batch=32, steps=12, rounds=4, count=1024),
                 headroom=dict(sizes=(64, 224), batch={64: 32, 224: 8}, steps=6, images=256),
                 utilisation=dict(backbone="resnet101", size=64, batch=32, steps=8, rounds=4, matmul=2048,
                                  variants=("xla", "batch64", "bf16")),
                 cache=dict(backbone="resnet50", size=64, count=2000, epochs=10, batch=32),
                 memory=dict(backbone="resnet101", size=64, batch=32, steps=20, count=512, export=True),
                 startup=dict(variants=("default", "feature_cache_off"), size=64),
                 study=dict(backbone="resnet50", seeds=4, size=32, count=200, epochs=1, runs_per_worker=4,
                            variants=("fresh", "warm"))),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def spread(values: List[float]) -> dict:
    """Median, min and max of ``values`` (rounded), the form every figure is reported in."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "n": len(values)}


def bench_recipe(backbone: str, size: int, batch: int, count: int, **extra):
    """A synthetic-galaxies recipe with random weights (ImageNet files are not available offline)."""
    from keras_tl import recipe as recipe_lib

    overrides = [f"model.backbone={backbone}", "model.weights=none", "model.bn=frozen",
                 f"data.image_size=[{size}, {size}]", f"data.batch_size={batch}",
                 "data.source=synthetic_galaxies", f"data.synthetic.count={count}",
                 "data.augment.flip=false", "data.augment.rot90=false", "train.tensorboard=false",
                 "model.head_dropout=0.2"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return recipe_lib.replace(recipe_lib.Recipe(name=f"bench_{backbone}_{size}"), overrides)


# ------------------------------------------------------------------ timed fit


def _timer_callback():
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Timestamps of every train batch end and of the epoch end (after earlier callbacks)."""

        def on_train_begin(self, logs=None):
            self.ends: List[float] = []
            self.epoch_end = None

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_end = time.perf_counter()

    return StepTimer()


def timed_fit(model, ds, steps: int, batch: int, callbacks=()) -> dict:
    """One ``fit`` epoch of ``steps`` steps: steady-state images/s (batch 2..steps) and the
    seconds spent after the last batch in epoch-end callbacks (checkpoints, logs)."""
    t = _timer_callback()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=list(callbacks) + [t])
    span = t.ends[-1] - t.ends[0]
    return {"ips": (len(t.ends) - 1) * batch / span if span > 0 else float("nan"),
            "epoch_end_s": (t.epoch_end - t.ends[-1]) if t.epoch_end else 0.0}


def interleave(fns: Dict[str, Callable[[], dict]], rounds: int) -> Dict[str, List[dict]]:
    """Run each function once to warm up (trace, compile, fill caches), then ``rounds`` times
    in turn (A B A B ...); returns the timed results per name."""
    out = {k: [] for k in fns}
    for name, fn in fns.items():
        log(f"  warm-up {name}")
        fn()
    for r in range(rounds):
        for name, fn in fns.items():
            res = fn()
            out[name].append(res)
            log(f"  round {r} {name}: {res}")
    return out


def _plain_preprocess(mode: str):
    import keras

    return {"caffe": keras.applications.resnet.preprocess_input, "tf": keras.applications.resnet_v2.preprocess_input,
            "torch": keras.applications.densenet.preprocess_input, "none": None}[mode]


def plain_model(backbone: str, size: int, channels: int, num_classes: int, head_dropout: float):
    """What a person writes by hand: keras.applications backbone + GAP + dropout + softmax, BN frozen."""
    import keras

    from keras_tl import backbones

    entry = backbones.get(backbone)
    inp = keras.Input((size, size, channels))
    pre = _plain_preprocess(entry.preprocess)
    x = keras.layers.Lambda(pre)(inp) if pre else inp
    base = getattr(keras.applications, entry.constructor)(include_top=False, weights=None, input_shape=(size, size, channels))
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # the Keras fine-tuning guide's advice, and keras_tl's bn: frozen
    x = keras.layers.GlobalAveragePooling2D()(base(x))
    x = keras.layers.Dropout(head_dropout)(x)
    out = keras.layers.Dense(num_classes, activation="softmax")(x)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def keras_tl_model(recipe, num_classes: int, phase, steps_per_epoch: int, runtime):
    """The model compiled exactly as keras_tl.train compiles a full-path phase."""
    from keras_tl import freeze, model as model_lib, optim

    with runtime.strategy.scope():
        model = model_lib.build_model(recipe, num_classes)
    freeze.apply_phase(model, phase, recipe)
    with runtime.strategy.scope():
        loss, metrics = optim.loss_and_metrics(num_classes, phase, recipe.train.top_k)
        optimizer = optim.make_optimizer(phase, steps_per_epoch)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=runtime.jit_compile,
                  steps_per_execution=recipe.train.steps_per_execution)
    return model


def trainer_callbacks(workdir: str):
    """The callbacks keras_tl.train attaches to every full-path fit (minus TensorBoard, off here)."""
    from keras_tl import checkpoint

    os.makedirs(workdir, exist_ok=True)
    # The trainer monitors val_accuracy; these fits have no validation, so: loss.
    return checkpoint.resume_callbacks(workdir, 0, "bench", "loss")


# -------------------------------------------------------------------- sections


def section_overhead(p: dict, tmp: str) -> dict:
    """keras_tl full-path training images/s ÷ a hand-written model.fit, same data and batch."""
    import keras

    from keras_tl import data as data_lib, distribute, optim
    from keras_tl.recipe import Phase

    recipe = bench_recipe(p["backbone"], p["size"], p["batch"], p["count"], **{"data.test_fraction": 0.0})
    runtime = distribute.setup(recipe)
    keras.utils.set_random_seed(0)
    d = data_lib.build_datasets(recipe, global_batch_size=p["batch"])
    k = len(d.class_names)
    ds = optim.encode_labels(d.train, k).repeat()
    phase = Phase(name="all", trainable="all", optimizer="adam", lr=1e-4)
    spe = max(1, d.counts["train"] // p["batch"])
    ktl = keras_tl_model(recipe, k, phase, spe, runtime)
    plain = plain_model(p["backbone"], p["size"], 3, k, recipe.model.head_dropout)
    cbs = trainer_callbacks(os.path.join(tmp, "overhead"))
    res = interleave({"keras_tl": lambda: timed_fit(ktl, ds, p["steps"], p["batch"], cbs),
                      "plain": lambda: timed_fit(plain, ds, p["steps"], p["batch"])}, p["rounds"])
    ratios = [a["ips"] / b["ips"] for a, b in zip(res["keras_tl"], res["plain"])]
    out = {"backbone": p["backbone"], "image_size": p["size"], "batch": p["batch"], "steps_per_round": p["steps"],
           "rounds": p["rounds"], "jit_compile": runtime.jit_compile,
           "keras_tl_ips": spread([r["ips"] for r in res["keras_tl"]]),
           "plain_ips": spread([r["ips"] for r in res["plain"]]),
           "overhead_ratio": spread(ratios),
           "keras_tl_epoch_end_s": spread([r["epoch_end_s"] for r in res["keras_tl"]]),
           "plain_epoch_end_s": spread([r["epoch_end_s"] for r in res["plain"]])}
    del ktl, plain
    keras.backend.clear_session()
    return out


def _train_step_runner(recipe, batch: int, steps: int, jit: bool, runtime):
    """A keras_tl model training on one in-memory batch repeated (model-bound images/s)."""
    import numpy as np
    import tensorflow as tf

    from keras_tl.recipe import Phase

    h, w = recipe.data.image_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, h, w, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, batch)]
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    rt = runtime.__class__(**{**runtime.__dict__, "jit_compile": jit})
    model = keras_tl_model(recipe, 10, Phase(name="all", trainable="all", lr=1e-4), 100, rt)
    return model, (lambda: timed_fit(model, ds, steps, batch))


def section_headroom(p: dict, tmp: str) -> dict:
    """tools/bench_input.py pipeline images/s ÷ ResNet101 training images/s at each size."""
    import keras

    sys.path.insert(0, TOOLS)
    import bench_input

    from keras_tl import distribute

    out = {"train": {}, "input": {}, "headroom": {}}
    for size in p["sizes"]:
        batch = p["batch"][size]
        recipe = bench_recipe("resnet101", size, batch, 64)
        runtime = distribute.setup(recipe)
        log(f"headroom: ResNet101 training at {size} px, batch {batch}")
        model, fn = _train_step_runner(recipe, batch, p["steps"], runtime.jit_compile, runtime)
        train_runs = interleave({"train": fn}, 1)["train"]
        del model
        keras.backend.clear_session()
        root = os.path.join(tmp, f"jpeg_{size}")
        bench_input.make_jpeg_folder(root, p["images"], int(round(size * 1.15)))
        log(f"headroom: input pipeline at {size} px")
        inp = bench_input.run_mode(root, size, "decode+augment", batch, 1)
        tips = train_runs[0]["ips"]
        out["train"][str(size)] = {"ips": round(tips, 2), "batch": batch, "steps": p["steps"]}
        out["input"][str(size)] = inp
        out["headroom"][str(size)] = round(inp["images_per_s"] / tips, 1)
        log(f"headroom {size}: input {inp['images_per_s']} / train {tips:.1f} img/s")
    return out


def forward_flops(model) -> int:
    """Analytic multiply-add FLOPs (×2) per image of the convolutions and dense layers, nested models included."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            _, oh, ow, oc = layer.output.shape
            total += 2 * oh * ow * oc * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            _, oh, ow, oc = layer.output.shape
            cin = layer.input.shape[-1]
            total += 2 * oh * ow * oc * kh * kw * cin // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def cpu_flags() -> list:
    """The CPU's vector-instruction flags that matter for float32/bfloat16 speed (Linux only)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [w for w in wanted if w in flags]


def matmul_flops(n: int, reps: int = 5) -> float:
    """Best FLOP/s of an n×n float32 matmul (tf.function, result forced to the host)."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    @tf.function(autograph=False)
    def f(a, b):
        return tf.reduce_sum(tf.linalg.matmul(a, b))

    f(a, b).numpy()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).numpy()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def section_utilisation(p: dict, tmp: str) -> dict:
    """Achieved training FLOP/s ÷ dense matmul FLOP/s, interleaved; XLA and batch-size variants."""
    import keras

    from keras_tl import distribute

    recipe = bench_recipe(p["backbone"], p["size"], p["batch"], 64)
    runtime = distribute.setup(recipe)
    variants = {"default": dict(batch=p["batch"], jit=runtime.jit_compile)}
    if "xla" in p["variants"]:
        variants["xla"] = dict(batch=p["batch"], jit=True)
    if "batch64" in p["variants"]:
        variants["batch64"] = dict(batch=64, jit=runtime.jit_compile)
    if "bf16" in p["variants"]:  # worth trying only where the CPU has bf16 instructions (cpu_flags)
        variants["bf16"] = dict(batch=p["batch"], jit=runtime.jit_compile, policy="mixed_bfloat16")
    fns, flops, models = {"matmul": lambda: {"flops": matmul_flops(p["matmul"])}}, {}, []
    for name, v in variants.items():
        previous = keras.mixed_precision.global_policy().name
        if v.get("policy"):  # the policy is read when layers are created: build this variant under it
            keras.mixed_precision.set_global_policy(v["policy"])
        try:
            model, fn = _train_step_runner(recipe, v["batch"], p["steps"], v["jit"], runtime)
        finally:
            keras.mixed_precision.set_global_policy(previous)
        models.append(model)
        flops[name] = 3 * forward_flops(model)  # forward + input gradients + weight gradients
        fns[name] = fn
    t0 = time.perf_counter()
    res = interleave(fns, p["rounds"])
    mm = [r["flops"] for r in res["matmul"]]
    out = {"backbone": p["backbone"], "image_size": p["size"], "matmul_n": p["matmul"],
           "cpu_flags": cpu_flags(), "jit_compile_default": runtime.jit_compile, "matmul_gflops": spread([m / 1e9 for m in mm]),
           "train_step_gflops_per_image": round(flops["default"] / 1e9, 3), "variants": {},
           "seconds": round(time.perf_counter() - t0, 1)}
    for name, v in variants.items():
        ips = [r["ips"] for r in res[name]]
        util = [i * flops[name] / m for i, m in zip(ips, mm)]
        out["variants"][name] = {"batch": v["batch"], "jit_compile": v["jit"], "policy": v.get("policy", "float32"), "ips": spread(ips),
                                 "achieved_gflops": spread([i * flops[name] / 1e9 for i in ips]),
                                 "utilisation": spread(util)}
        if name != "default":
            out["variants"][name]["ips_ratio_vs_default"] = spread(
                [a["ips"] / b["ips"] for a, b in zip(res[name], res["default"])])
    out["utilisation"] = out["variants"]["default"]["utilisation"]
    del models
    keras.backend.clear_session()
    return out


def section_cache(p: dict, tmp: str) -> dict:
    """A head-only phase of ``epochs`` epochs through keras_tl.train.run, feature_cache auto vs off."""
    import keras

    from keras_tl import train

    def one(mode: str, i: int, store: str = "", tag: str = "") -> dict:
        extra = {"train.feature_store": store} if store else {}
        recipe = bench_recipe(p["backbone"], p["size"], p["batch"], p["count"], **{
            "train.feature_cache": mode, "data.val_fraction": 0.3, "data.test_fraction": 0.0,
            "export.savedmodel": "false", "export.keras": "false", "model.head_dropout": 0.0,
            "train.phases": f"[{{name: head, trainable: head, epochs: {p['epochs']}, optimizer: adam, lr: 0.003}}]"}, **extra)
        workdir = os.path.join(tmp, f"cache_{mode}_{i}{tag}")
        keras.backend.clear_session()
        t0 = time.perf_counter()
        metrics = train.run(recipe, workdir, log=lambda *a: None)
        wall = time.perf_counter() - t0
        with open(os.path.join(workdir, "run.json")) as f:
            ph = json.load(f)["phases"][0]
        return {"phase_s": ph["wall_time_s"], "run_s": round(wall, 2), "path": ph["path"],
                "feature_extraction_s": ph.get("feature_extraction_s"),
                "val_accuracy": metrics["val"]["accuracy"], "val_examples": metrics["val"]["examples"],
                "history": metrics["history"]}

    rounds = 2 if p["count"] >= 2000 else 1
    res = {"cached": [], "naive": [], "stored_first": [], "stored_reused": []}
    for i in range(rounds):
        for mode, key in (("auto", "cached"), ("off", "naive")):
            log(f"cache: round {i}, feature_cache {mode}")
            res[key].append(one(mode, i))
            log(f"  {res[key][-1]}")
        # A study's later run: the same frozen backbone and data, features from the shared store.
        store = os.path.join(tmp, f"feature_store_{i}")
        for key in ("stored_first", "stored_reused"):
            log(f"cache: round {i}, {key} (train.feature_store {store})")
            res[key].append(one("auto", i, store, tag=f"_{key}"))
            log(f"  {res[key][-1]}")
    reuse = [n["phase_s"] / r["phase_s"] for r, n in zip(res["stored_reused"], res["naive"])]
    identical = all(r["history"] == c["history"] and r["val_accuracy"] == c["val_accuracy"]
                    for r, c in zip(res["stored_reused"], res["cached"]))
    speed = [n["phase_s"] / c["phase_s"] for c, n in zip(res["cached"], res["naive"])]
    # What the fast path could reach if training the head cost nothing: the naive phase ÷ the one
    # extraction pass (trace included). 10 naive epochs ≈ 10 such passes, so this is ≈ 10.
    ceiling = [n["phase_s"] / c["feature_extraction_s"] for c, n in zip(res["cached"], res["naive"])
               if c.get("feature_extraction_s")]
    acc = [100 * (c["val_accuracy"] - n["val_accuracy"]) for c, n in zip(res["cached"], res["naive"])]
    return {"backbone": p["backbone"], "image_size": p["size"], "images": p["count"], "epochs": p["epochs"],
            "runs": res, "cache_speedup": spread(speed), "cache_val_acc_diff_points": spread(acc),
            "reuse_speedup": spread(reuse), "reuse_metrics_identical": identical,
            "speedup_if_head_training_were_free": spread(ceiling) if ceiling else None}


def section_probe(p: dict, tmp: str) -> dict:
    """Runs tools/bench_probe.py (owned by the diagnostics engineer) and returns its JSON."""
    tool = os.path.join(TOOLS, "bench_probe.py")
    if not os.path.exists(tool):
        return {"available": False, "note": "tools/bench_probe.py does not exist yet"}
    out = os.path.join(tmp, "probe.json")
    cmd = [sys.executable, tool, "--out", out, "--repeats", "1" if p.get("quick") else "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or not os.path.exists(out):
        return {"available": True, "ok": False, "cmd": " ".join(cmd), "stderr": r.stderr[-2000:]}
    with open(out) as f:
        return {"available": True, "ok": True, "cmd": " ".join(cmd), "result": json.load(f)}


def _run_child(cmd: List[str], env: dict, timeout: float) -> dict:
    """Run ``cmd``; wall seconds, exit status and this child's own peak RSS (wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = t0 + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    output = proc.stdout.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(wall, 2), "exit": proc.returncode, "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
            "tail": output[-1500:]}


def _child_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", "")})
    env.update(extra)
    return env


def section_memory(p: dict, tmp: str) -> dict:
    """Peak RSS of the trainer CLI on a ResNet101 run (subprocess), plus its cache sizes."""
    size, batch, count = p["size"], p["batch"], p["count"]
    workdir = os.path.join(tmp, "memory_run")
    sets = [f"model.backbone={p['backbone']}", "model.weights=none", f"data.image_size=[{size},{size}]",
            f"data.batch_size={batch}", f"data.synthetic.count={count}", "train.tensorboard=false",
            f"export.savedmodel={str(p['export']).lower()}", f"export.keras={str(p['export']).lower()}",
            f"train.phases=[{{name: all, trainable: all, epochs: 1, steps_per_epoch: {p['steps']}}}]"]
    cmd = [sys.executable, "-m", "keras_tl.train", "--recipe", os.path.join(ROOT, "recipes", "smoke.yaml"),
           "--workdir", workdir] + [a for s in sets for a in ("--set", s)]
    log(f"memory: {' '.join(cmd[1:])}")
    r = _run_child(cmd, _child_env(), 1200)
    from keras_tl import backbones

    n_val = int(round(count * 0.1))
    n_test = int(round(count * 0.1))
    n_train = count - n_val - n_test
    px = size * size * 3
    caches = {
        "data.cache memory (float32 decoded images, train+val+test)": count * px * 4,
        "synthetic source arrays (uint8, in the graph)": count * px,
        "feature cache (float32 pooled features, train+val) if a head-only phase": (n_train + n_val) * backbones.get(p["backbone"]).feature_width * 4,
    }
    return {"cmd": " ".join(cmd), "exit": r["exit"], "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"],
            "backbone": p["backbone"], "image_size": size, "batch": batch, "images": count,
            "export": p["export"], "cache_mb": {k: round(v / 2**20, 1) for k, v in caches.items()},
            "tail": r["tail"] if r["exit"] else r["tail"][-300:]}


def section_startup(p: dict, tmp: str) -> dict:
    """Launch → end of the first training step of recipes/smoke.yaml (killed at that point)."""
    out = {}
    for variant in p["variants"]:
        sets = [f"data.image_size=[{p['size']},{p['size']}]"]
        if variant == "feature_cache_off":
            sets.append("train.feature_cache=off")
        cmd = [sys.executable, "-m", "keras_tl.train", "--recipe", os.path.join(ROOT, "recipes", "smoke.yaml"),
               "--workdir", os.path.join(tmp, f"startup_{variant}")] + [a for s in sets for a in ("--set", s)]
        log(f"startup ({variant}): {' '.join(cmd[1:])}")
        r = _run_child(cmd, _child_env(KERAS_TL_FAULT="batch:0:0:0"), 900)
        killed = r["exit"] == -9
        t0 = time.perf_counter()
        imp = subprocess.run([sys.executable, "-c", "import tensorflow, keras"], env=_child_env(), capture_output=True)
        out[variant] = {"cmd": "KERAS_TL_FAULT=batch:0:0:0 " + " ".join(cmd[1:]), "startup_s": r["wall_s"] if killed else None,
                        "reached_first_step": killed, "exit": r["exit"],
                        "import_tf_keras_s": round(time.perf_counter() - t0, 2) if imp.returncode == 0 else None}
        if not killed:
            out[variant]["tail"] = r["tail"]
    out["startup_s"] = out[p["variants"][0]]["startup_s"]
    return out


STUDY_RECIPE = """extends: {smoke}
name: bench_study
model: {{backbone: {backbone}}}
data:
  image_size: [{size}, {size}]
  synthetic: {{count: {count}}}
train:
  tensorboard: false
  phases:
    - {{name: head, trainable: head, epochs: {epochs}}}
    - {{name: finetune, trainable: all, epochs: {epochs}}}
study:
  freeze: [head_only, all]
  seeds: {seeds}
  baseline: {{freeze: head_only}}
"""


def section_study(p: dict, tmp: str) -> dict:
    """Study wall ÷ the runs' own fit + evaluate + export time: a fresh process per run vs warm workers."""
    path = os.path.join(tmp, "bench_study.yaml")
    with open(path, "w") as f:
        f.write(STUDY_RECIPE.format(smoke=os.path.join(ROOT, "recipes", "smoke.yaml"), **p))
    out = {}
    for variant in p["variants"]:
        workdir = os.path.join(tmp, f"study_{variant}")
        k = p["runs_per_worker"] if variant == "warm" else 1
        cmd = [sys.executable, "-m", "keras_tl.study", "--recipe", path, "--workdir", workdir, "--runs_per_worker", str(k)]
        log(f"study ({variant}): {' '.join(cmd[1:])}")
        r = _run_child(cmd, _child_env(), 7200)
        own, runs = [], []
        for root, _dirs, files in os.walk(os.path.join(workdir, "runs")):
            if "run.json" in files:
                with open(os.path.join(root, "run.json")) as f:
                    w = json.load(f)["wall_time_s"]
                own.append(w["training"] + w.get("evaluate", 0.0) + w.get("export", 0.0))
                runs.append({"dir": os.path.relpath(root, workdir), **w})
        out[variant] = {"cmd": " ".join(cmd[1:]), "exit": r["exit"], "runs_per_worker": k, "study_wall_s": r["wall_s"],
                        "runs": len(runs), "sum_own_s": round(sum(own), 2), "min_own_s": round(min(own), 2) if own else None,
                        "study_overhead_ratio": round(r["wall_s"] / sum(own), 3) if own else None,
                        "peak_rss_mb": r["peak_rss_mb"], "per_run": runs}
        if r["exit"]:
            out[variant]["tail"] = r["tail"]
    if "fresh" in out and "warm" in out and p["runs_per_worker"] > 1:
        out["rss_growth_per_run_mb"] = round((out["warm"]["peak_rss_mb"] - out["fresh"]["peak_rss_mb"]) / (p["runs_per_worker"] - 1), 1)
    return out


# ------------------------------------------------------------------------ main


def summarise(sections: dict) -> dict:
    s = {}
    o = sections.get("overhead")
    if o:
        s["overhead_ratio"] = o["overhead_ratio"]["median"]
    h = sections.get("headroom")
    if h:
        for size, v in h["headroom"].items():
            s[f"input_headroom_{size}"] = v
    c = sections.get("cache")
    if c:
        s["cache_speedup"] = c["cache_speedup"]["median"]
        s["cache_val_acc_diff_points"] = c["cache_val_acc_diff_points"]["median"]
        if "reuse_speedup" in c:
            s["reuse_speedup"] = c["reuse_speedup"]["median"]
            s["reuse_metrics_identical"] = c["reuse_metrics_identical"]
    pr = sections.get("probe")
    if pr and pr.get("ok"):
        res = pr["result"]
        s["probe_cost_ratio"] = res.get("ratio_wall")
        s["probe_cost_ratio_cpu"] = res.get("ratio_cpu")
    u = sections.get("utilisation")
    if u:
        s["utilisation"] = u["utilisation"]["median"]
        for name, v in u["variants"].items():
            if "ips_ratio_vs_default" in v:
                s[f"{name}_speedup"] = v["ips_ratio_vs_default"]["median"]
    m = sections.get("memory")
    if m:
        s["peak_rss_mb"] = m["peak_rss_mb"]
    st = sections.get("startup")
    if st:
        s["startup_s"] = st["startup_s"]
    sd = sections.get("study")
    if sd:
        for variant in ("fresh", "warm"):
            if variant in sd:
                s["study_overhead_ratio" if variant == "warm" else "study_overhead_ratio_fresh"] = sd[variant]["study_overhead_ratio"]
        if "rss_growth_per_run_mb" in sd:
            s["study_rss_growth_per_run_mb"] = sd["rss_growth_per_run_mb"]
    return s


TARGETS = {"overhead_ratio": ">= 0.97", "input_headroom_64": ">= 5", "input_headroom_224": ">= 5",
           "cache_speedup": ">= 7", "reuse_speedup": ">= 20", "reuse_metrics_identical": "True", "cache_val_acc_diff_points": "|x| <= 1", "probe_cost_ratio": "<= 1.5", "probe_cost_ratio_cpu": "<= 1.5",
           "study_overhead_ratio": "<= 1.15"}


def print_table(summary: dict) -> None:
    print(f"{'figure':<28} {'value':>10}  target")
    for k, v in summary.items():
        val = "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
        print(f"{k:<28} {val:>10}  {TARGETS.get(k, '')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds: under 5 minutes on 2 cores")
    ap.add_argument("--tiny", action="store_true", help="seconds-long smoke mode for the test suite (figures meaningless)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--out", help="write every figure as JSON here")
    ap.add_argument("--variants", help="utilisation variants to add, comma-separated: xla,batch64,bf16 (the full run has all three)")
    ap.add_argument("--threads", help="INTRA,INTER: TensorFlow op thread pools (set before TF starts; default: TF's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        import tensorflow as tf

        intra, inter = (int(v) for v in args.threads.split(","))
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in wanted if s not in SECTIONS]
    if bad:
        print(f"error: --sections: unknown section {bad[0]!r}; valid: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    plan = PLANS[mode]
    t_all = time.perf_counter()
    load_before = os.getloadavg()
    sections, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="keras_tl_bench_") as tmp:
        for name in wanted:
            p = dict(plan.get(name, {}), quick=mode != "full")
            if name == "utilisation" and args.variants:
                p["variants"] = tuple(v.strip() for v in args.variants.split(",") if v.strip())
            log(f"section {name}: {p}")
            t0 = time.perf_counter()
            sections[name] = globals()[f"section_{name}"](p, tmp)
            seconds[name] = round(time.perf_counter() - t0, 1)
            log(f"section {name} done in {seconds[name]} s")
    import keras
    import tensorflow as tf

    summary = summarise(sections)
    result = {
        "tool": "bench", "mode": mode, "summary": summary, "targets": TARGETS, "sections": sections,
        "seconds": {**seconds, "total": round(time.perf_counter() - t_all, 1)},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version(),
                    "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"), "threads": args.threads or "default"},
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT) if sys.argv and sys.argv[0] else "tools/bench.py"] + (argv if argv is not None else sys.argv[1:])),
    }
    print_table(summary)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, default=str)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
