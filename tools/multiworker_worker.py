"""One worker of a multi-worker smoke run: trains a tiny model for a few steps under
MultiWorkerMirroredStrategy, as chosen by keras_tl.distribute.setup from TF_CONFIG.

    # two terminals on one machine (or two machines, with their own addresses):
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]}, "task": {"type": "worker", "index": 0}}' \
        python tools/multiworker_worker.py --steps 2
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]}, "task": {"type": "worker", "index": 1}}' \
        python tools/multiworker_worker.py --steps 2

What it shows: both workers join one collective, train in lock-step, and end with identical
weights. Prints one line ``RESULT {json}`` (replicas, task, losses, a weight checksum).
Used by tests/test_multiworker.py; about 15 s on 2 CPU cores.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--global_batch", type=int, default=8)
    args = parser.parse_args()

    from keras_tl import distribute
    from keras_tl.recipe import Recipe, TrainConfig

    # setup first: the strategy must exist before any other TensorFlow op runs.
    runtime = distribute.setup(Recipe(train=TrainConfig(distribute="multi_worker", precision="float32")))

    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)  # same initial weights on every worker
    rng = np.random.default_rng(0)
    n = args.global_batch * args.steps
    x = rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32")
    y = (np.arange(n) % 3).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.global_batch).repeat()
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(opts)

    with runtime.strategy.scope():
        inputs = keras.Input((32, 32, 3), name="pixels")
        h = keras.layers.Rescaling(1 / 255.0)(inputs)
        h = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(h)
        h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
        out = keras.layers.Dense(3, activation="softmax", dtype="float32", name="predictions")(h)
        model = keras.Model(inputs, out)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=runtime.jit_compile)
    hist = model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0)
    checksum = float(sum(np.abs(w).sum() for w in model.get_weights()))
    print("RESULT " + json.dumps({"replicas": runtime.num_replicas, "kind": runtime.kind, "task": runtime.task,
                                  "is_chief": runtime.is_chief, "loss": hist.history["loss"], "checksum": checksum}),
          flush=True)


if __name__ == "__main__":
    main()
