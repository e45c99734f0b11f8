"""Linear and kNN probes on fixed features: how linearly / locally separable are the classes?

Both probes pick their one hyper-parameter on the training features only (cross-validation for
the logistic-regression C, leave-one-out for k) and report accuracy on the validation features,
so the figure for a stage is not tuned on the data it is reported on.
"""

from __future__ import annotations

import warnings
from typing import Dict, Mapping, Sequence

import numpy as np

CS = (1e-3, 1e-2, 1e-1, 1.0)
KS = (5, 10, 20)


def linear_probe(x_train, y_train, x_val, y_val, *, cs: Sequence[float] = CS, seed: int = 0,
                 max_iter: int = 100, tol: float = 1e-3) -> Dict[str, float]:
    """Standardised features → multinomial logistic regression (scikit-learn, L2).

    C is chosen on the training features only: a warm-started path over ``cs`` scored on
    stratified 3-fold CV (fewer than 600 training examples) or on one stratified 25% hold-out
    (more: the fits dominate the probe's cost), then refit on all training features.
    Returns {"accuracy", "C", "cv_accuracy", "train_accuracy"}.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit
    from sklearn.preprocessing import StandardScaler

    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    _check(x_train, y_train, x_val, y_val)
    scaler = StandardScaler().fit(x_train)
    xt, xv = scaler.transform(x_train), scaler.transform(x_val)
    cs = sorted(float(c) for c in cs)
    smallest = int(np.bincount(y_train)[np.unique(y_train)].min())
    if len(y_train) < 600:
        splitter = StratifiedKFold(min(3, smallest), shuffle=True, random_state=seed) if smallest >= 2 else None
    else:
        splitter = StratifiedShuffleSplit(1, test_size=0.25, random_state=seed) if smallest >= 2 else None

    def model(c, warm=False):
        return LogisticRegression(C=c, max_iter=max_iter, tol=tol, warm_start=warm)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a probe at max_iter is still a fair probe
        scores = np.zeros(len(cs))
        if splitter is not None and len(cs) > 1:
            for fit_idx, held_idx in splitter.split(xt, y_train):
                clf = model(cs[0], warm=True)
                for i, c in enumerate(cs):  # strongest regularisation first; each fit starts from the last
                    clf.set_params(C=c)
                    clf.fit(xt[fit_idx], y_train[fit_idx])
                    scores[i] += np.mean(clf.predict(xt[held_idx]) == y_train[held_idx])
            scores /= splitter.get_n_splits()
            best = int(np.argmax(scores))  # ties → the smaller C
        else:  # a class with a single training example: no CV possible, use the middle of the grid
            best = len(cs) // 2
        clf = model(cs[best]).fit(xt, y_train)
    return {"accuracy": float(np.mean(clf.predict(xv) == y_val)), "C": cs[best],
            "cv_accuracy": float(scores[best]) if splitter is not None else float("nan"),
            "train_accuracy": float(np.mean(clf.predict(xt) == y_train))}


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _neighbours(query: np.ndarray, base: np.ndarray, k: int, exclude_self: bool, chunk: int = 2048):
    """Indices [Nq, k] and cosine similarities of the k nearest rows of ``base`` (most similar first)."""
    idx = np.empty((len(query), k), np.int64)
    sim = np.empty((len(query), k), np.float32)
    for start in range(0, len(query), chunk):
        s = query[start:start + chunk] @ base.T
        if exclude_self:
            rows = np.arange(s.shape[0])
            s[rows, rows + start] = -np.inf
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, 1)
        order = np.argsort(-ps, axis=1)
        idx[start:start + chunk] = np.take_along_axis(part, order, 1)
        sim[start:start + chunk] = np.take_along_axis(ps, order, 1)
    return idx, sim


def _vote(nb_labels: np.ndarray, nb_sim: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    votes = np.zeros((len(nb_labels), num_classes))
    rows = np.repeat(np.arange(len(nb_labels)), k)
    # Majority vote; the summed similarity only breaks ties.
    np.add.at(votes, (rows, nb_labels[:, :k].ravel()), 1.0 + 1e-3 * nb_sim[:, :k].ravel())
    return votes.argmax(1)


def knn_probe(x_train, y_train, x_val, y_val, *, ks: Sequence[int] = KS) -> Dict[str, float]:
    """Cosine k-nearest-neighbour vote, k chosen by leave-one-out accuracy on the training
    features. Returns {"accuracy", "k", "train_loo_accuracy"}."""
    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    _check(x_train, y_train, x_val, y_val)
    ks = sorted({min(int(k), len(y_train) - 1) for k in ks} - {0})
    if not ks:
        raise ValueError("knn_probe: need at least 2 training examples")
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    xt, xv = _l2(x_train), _l2(x_val)
    kmax = ks[-1]
    idx_t, sim_t = _neighbours(xt, xt, kmax, exclude_self=True)
    loo = {k: float(np.mean(_vote(y_train[idx_t], sim_t, k, num_classes) == y_train)) for k in ks}
    best = max(ks, key=lambda k: (loo[k], -k))
    idx_v, sim_v = _neighbours(xv, xt, best, exclude_self=False)
    acc = float(np.mean(_vote(y_train[idx_v], sim_v, best, num_classes) == y_val))
    return {"accuracy": acc, "k": int(best), "train_loo_accuracy": loo[best]}


def _check(x_train, y_train, x_val, y_val) -> None:
    if len(x_train) != len(y_train) or len(x_val) != len(y_val):
        raise ValueError("probe: features and labels differ in length")
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"probe: the training features hold {len(np.unique(y_train))} class(es); a probe needs at least 2")
    if len(y_val) == 0:
        raise ValueError("probe: no validation examples")


def probe_stages(train: Mapping[str, np.ndarray], y_train, val: Mapping[str, np.ndarray], y_val, *,
                 seed: int = 0) -> Dict[str, list]:
    """Both probes for every stage (in the order of ``train``).

    Returns {"linear": [acc per stage], "knn": [...], "linear_C": [...], "knn_k": [...]}.
    """
    from threadpoolctl import threadpool_limits

    out = {"linear": [], "knn": [], "linear_C": [], "knn_k": []}
    # The problems are small: multi-threaded BLAS only adds contention (10-100x slower under load).
    with threadpool_limits(limits=1):
        _probe_all(train, y_train, val, y_val, seed, out)
    return out


def _probe_all(train, y_train, val, y_val, seed, out) -> None:
    for stage in train:
        lin = linear_probe(train[stage], y_train, val[stage], y_val, seed=seed)
        knn = knn_probe(train[stage], y_train, val[stage], y_val)
        out["linear"].append(lin["accuracy"])
        out["linear_C"].append(lin["C"])
        out["knn"].append(knn["accuracy"])
        out["knn_k"].append(knn["k"])


def chance_accuracy(y_train, y_val) -> float:
    """Accuracy of always predicting the most frequent training class."""
    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    return float(np.mean(y_val == np.bincount(y_train).argmax())) if len(y_val) else float("nan")
