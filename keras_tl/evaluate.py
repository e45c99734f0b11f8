"""Evaluate a trained model: loss, accuracy, top-k, per-class scores, ROC-AUC and the confusion
matrix per split, written as ``confusion_<split>.json`` and ``.png`` beside the run's records."""

from __future__ import annotations

import os
from typing import Any, Dict, Sequence, Tuple

from keras_tl import fs


def evaluate(model, ds, class_names: Sequence[str], top_k: int) -> Dict[str, Any]:
    """Loss, accuracy, top-k, per-class precision/recall/F1, ROC-AUC and the confusion matrix on ``ds``."""
    import numpy as np

    from keras_tl import model as model_lib

    # Compiled once: calling a ResNet eagerly batch by batch is 2-3x slower (tools/bench.py).
    forward = model_lib.inference_function(model)
    probs, labels = [], []
    for x, y in ds:
        probs.append(np.asarray(forward(x), dtype=np.float64))
        labels.append(np.asarray(y).reshape(-1))
    p = np.concatenate(probs) if probs else np.zeros((0, len(class_names)))
    y = np.concatenate(labels).astype(int) if labels else np.zeros((0,), int)
    if p.shape[1] == 1:  # binary, one sigmoid unit: expand to two columns
        p = np.concatenate([1 - p, p], axis=1)
    out: Dict[str, Any] = {"examples": int(len(y))}
    if len(y) == 0:
        return out
    out["loss"] = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1.0))))
    out.update(_scores(p, y, class_names, top_k))
    return out


def _scores(p, y, class_names: Sequence[str], top_k: int) -> Dict[str, Any]:
    """Everything but the loss, from probabilities ``p`` [N, K] and labels ``y`` [N]."""
    import numpy as np
    from sklearn import metrics as skm

    n_classes = len(class_names)
    pred = p.argmax(1)
    out: Dict[str, Any] = {"accuracy": float(np.mean(pred == y))}
    k = min(top_k, n_classes - 1)
    if k >= 2:
        topk = np.argsort(-p, axis=1)[:, :k]
        out[f"top{k}"] = float(np.mean((topk == y[:, None]).any(1)))
    labels_all = list(range(n_classes))
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=labels_all, zero_division=0)
    out["per_class"] = {
        name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(sup[i])}
        for i, name in enumerate(class_names)
    }
    out["macro_f1"] = float(np.mean(f1))
    present = np.unique(y)
    try:
        if n_classes == 2 and len(present) == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y, p[:, 1]))
        elif len(present) == n_classes and n_classes > 2:
            out["roc_auc_ovr_macro"] = float(skm.roc_auc_score(y, p, multi_class="ovr", labels=labels_all))
    except ValueError:
        pass
    out["confusion"] = skm.confusion_matrix(y, pred, labels=labels_all).tolist()
    return out


def evaluate_run(model, datasets, recipe, out_dir: str) -> Tuple[Dict[str, dict], str]:
    """Evaluate on val (and test, when there is one) and write the confusion matrices to ``out_dir``.

    Returns (split → results, the split the run reports: test if present, else val).
    """
    class_names = list(datasets.class_names)
    results = {"val": evaluate(model, datasets.val, class_names, recipe.train.top_k)}
    if datasets.test is not None:
        results["test"] = evaluate(model, datasets.test, class_names, recipe.train.top_k)
    for split, res in results.items():
        cm = res.get("confusion")
        if cm is not None:
            fs.write_json(os.path.join(out_dir, f"confusion_{split}.json"), {"class_names": class_names, "matrix": cm})
            plot_confusion(cm, class_names, os.path.join(out_dir, f"confusion_{split}.png"),
                           f"{recipe.name}: {split} (accuracy {res['accuracy']:.3f})")
    return results, "test" if "test" in results else "val"


def plot_confusion(matrix, class_names, path: str, title: str) -> None:
    """The row-normalised confusion matrix with its counts, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from keras_tl.diagnostics import plots

    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    plots.save_png(fig, path)
