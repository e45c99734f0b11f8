"""How many of the head's hidden ReLU units are dead (never active on a batch of validation images),
at initialisation and during the first epoch of training every layer.

    python tools/dead_head_units.py --recipe recipes/lite0_study_base.yaml --set model.weights=none [--lr 1e-3]

Prints one line at initialisation and after steps 1, 6, 21 and the last of epoch 1: loss and accuracy
so far, the mean and across-image spread of the pooled backbone features, the fraction of dead head
units, and the spread of the predicted probabilities across images (near 0: the model predicts the
same for every image). Used for the README's Evidence (a from-scratch head dies).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args(argv)
    from keras_tl import cli

    cli.setup_output()
    import keras
    import numpy as np

    from keras_tl import data as data_lib
    from keras_tl import freeze, model as model_lib
    from keras_tl import recipe as recipe_lib

    recipe = recipe_lib.load(args.recipe, args.overrides)
    ds = data_lib.build_datasets(recipe, global_batch_size=recipe.data.batch_size, drop_remainder=False,
                                 scanned=data_lib.scan(recipe))
    keras.utils.set_random_seed(recipe.seed)
    model = model_lib.build_model(recipe, len(ds.class_names))
    freeze.apply_phase(model, "all", recipe)
    x, _ = next(iter(ds.val))
    names = [layer.name for layer in model.layers]
    dense = model.get_layer("head_dense_0") if "head_dense_0" in names else None
    pooled = keras.Model(model.inputs, model.get_layer("pool").output)
    hidden = keras.Model(model.inputs, dense.output) if dense is not None else None

    def report(tag: str) -> None:
        f = np.asarray(pooled(x, training=False))
        line = f"{tag}: pooled features mean {f.mean():.3f}, across-image std {f.std(0).mean():.4f}"
        if hidden is not None:
            h = np.asarray(hidden(x, training=False))
            line += f"; dead head units {np.mean((h <= 0).all(0)):.2f} of {h.shape[-1]}"
        probs = np.asarray(model(x, training=False))
        print(line + f"; probabilities' across-image std {probs.std(0).mean():.4f}", flush=True)

    steps = int(np.ceil(ds.counts["train"] / recipe.data.batch_size))

    class Report(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch in (0, 5, 20, steps - 1):
                report(f"step {batch + 1} (loss {logs['loss']:.3f}, accuracy {logs['accuracy']:.3f})")

    model.compile(keras.optimizers.Adam(args.lr), keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    report("init")
    model.fit(ds.train, epochs=1, verbose=0, callbacks=[Report()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
