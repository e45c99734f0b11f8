"""Does a head-only training step over a frozen backbone cost more than inference?

    python tools/bench_frozen_step.py [--backbone resnet50] [--size 64] [--batch 32] [--batches 13] [--rounds 4]

Interleaves, in one process, passes of ``train_on_batch`` on a keras_tl model whose backbone is
frozen (the trainer's head phase: BN in inference mode, only the head trainable) with passes of
the compiled inference function the fast path extracts features with, over the same in-memory
batches. A ratio near 1 means TensorFlow runs no backward pass through frozen layers, so one naive
head epoch costs one inference pass, and the fast path's speedup over N epochs is at most about N.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=13)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)

    import numpy as np

    import bench
    from keras_tl import freeze
    from keras_tl import model as model_lib

    recipe = bench.bench_recipe(args.backbone, args.size, args.batch, max(10, args.batch * args.batches), **{
        "train.phases": "[{name: head, trainable: head, epochs: 1, optimizer: adam, lr: 0.001}]"})
    model = model_lib.build_model(recipe, 10)
    freeze.apply_phase(model, recipe.train.phases[0], recipe)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    forward = model_lib.inference_function(model_lib.feature_extractor(model))
    rng = np.random.default_rng(0)
    xs = [rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(np.float32) for _ in range(args.batches)]
    ys = [np.eye(10, dtype=np.float32)[rng.integers(0, 10, args.batch)] for _ in range(args.batches)]

    def train_pass():
        for x, y in zip(xs, ys):
            model.train_on_batch(x, y)

    def inference_pass():
        for x in xs:
            np.asarray(forward(x))

    train_pass(), inference_pass()  # trace and warm up both
    ips = {"frozen_train_step": [], "inference": []}
    n = args.batch * args.batches
    for _ in range(args.rounds):
        for key, fn in (("frozen_train_step", train_pass), ("inference", inference_pass)):
            t = time.perf_counter()
            fn()
            ips[key].append(n / (time.perf_counter() - t))
    ratio = [i / t for i, t in zip(ips["inference"], ips["frozen_train_step"])]
    out = {"args": vars(args), "trainable_weights": len(model.trainable_weights),
           "images_per_s": {k: [round(v, 1) for v in vs] for k, vs in ips.items()},
           "inference_over_frozen_train_step": {"median": round(statistics.median(ratio), 3),
                                                "min": round(min(ratio), 3), "max": round(max(ratio), 3)},
           "loadavg_1m": os.getloadavg()[0]}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
