"""Task difficulty check: a small CNN trained from scratch on the synthetic galaxies.

    python tools/difficulty_check.py [--train 2000] [--val 1000] [--epochs 10] [--survey decals] [--out FILE.json]

The dataset is useful for transfer-learning studies only if it is neither trivial nor noise:
validation accuracy should land well above chance (10%) and well below 100%.
"""

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_tl.data import synthetic  # noqa: E402


def build_cnn(image_size: int) -> keras.Model:
    """Three conv + max-pool layers, a small dense layer, softmax over the 10 classes."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for filters in (32, 64, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.Dense(synthetic.NUM_CLASSES, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--survey", default="decals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, help="write per-epoch accuracies as JSON here")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    kw = dict(seed=args.seed, image_size=args.image_size, survey=args.survey)
    x_train, y_train = synthetic.generate(range(args.train), **kw)
    x_val, y_val = synthetic.generate(range(args.train, args.train + args.val), **kw)

    model = build_cnn(args.image_size)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(
        x_train, y_train, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=64, verbose=2
    )
    wall = time.perf_counter() - start

    val_acc = [round(float(a), 4) for a in history.history["val_accuracy"]]
    train_acc = [round(float(a), 4) for a in history.history["accuracy"]]
    predictions = np.argmax(model.predict(x_val, verbose=0), axis=1)
    confusion = np.zeros((synthetic.NUM_CLASSES, synthetic.NUM_CLASSES), int)
    np.add.at(confusion, (y_val, predictions), 1)
    print("\nper-class validation recall:")
    for c, name in enumerate(synthetic.CLASS_NAMES):
        row = confusion[c]
        worst = int(np.argsort(row)[-2]) if row.argmax() == c else int(row.argmax())
        print(f"  {name:26s} {row[c] / max(row.sum(), 1):5.2f}   most confused with {synthetic.CLASS_NAMES[worst]}")
    print(f"\nval accuracy per epoch: {val_acc}")
    print(f"final val accuracy {val_acc[-1]:.3f} (chance 0.100), best {max(val_acc):.3f}; train {train_acc[-1]:.3f}; "
          f"{wall:.0f} s")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {"args": {k: str(v) for k, v in vars(args).items()}, "val_accuracy": val_acc,
                  "train_accuracy": train_acc, "confusion": confusion.tolist(), "wall_s": round(wall, 1)}  # fmt: skip
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
