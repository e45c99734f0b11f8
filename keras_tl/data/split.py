"""Splits and nested subsets as pure functions of (example ids, labels, seed).

Every example is ranked inside its class by a seeded hash of its id, so the
assignment of an example depends only on its own id, its class and the seed
(not on the order the files were listed in), and adding a file moves at most
the boundary examples of its own class. Subsets take prefixes of a second,
independent ranking, so for one ``split_seed`` the 10% subset lies inside the
25% subset, which lies inside the full train split.
"""

from __future__ import annotations

import hashlib
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from keras_tl.errors import DataError


def _rank_keys(ids: Sequence[str], seed: int, salt: str) -> np.ndarray:
    """A 64-bit sort key per id, a pure function of (salt, seed, id)."""
    keys = np.empty(len(ids), dtype=np.uint64)
    prefix = f"{salt}:{seed}:".encode()
    for i, ident in enumerate(ids):
        keys[i] = int.from_bytes(hashlib.blake2b(prefix + str(ident).encode(), digest_size=8).digest(), "little")
    return keys


def _ranked_by_class(ids: Sequence[str], labels: np.ndarray, seed: int, salt: str) -> Dict[int, np.ndarray]:
    """For each class present, its example indices in seeded-hash order (ties broken by id)."""
    keys = _rank_keys(ids, seed, salt)
    ids_arr = np.asarray([str(i) for i in ids])
    out = {}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        order = np.lexsort((ids_arr[idx], keys[idx]))
        out[int(c)] = idx[order]
    return out


def _allocate(sizes: Dict[int, int], fraction: float) -> Dict[int, int]:
    """Per-class counts summing to round(total * fraction), by largest remainder (stratified)."""
    total = sum(sizes.values())
    target = int(round(total * fraction))
    exact = {c: n * fraction for c, n in sizes.items()}
    alloc = {c: int(math.floor(x)) for c, x in exact.items()}
    rest = target - sum(alloc.values())
    # Largest fractional part first; class id breaks ties so the result is deterministic.
    for c in sorted(exact, key=lambda c: (-(exact[c] - alloc[c]), c))[: max(rest, 0)]:
        alloc[c] += 1
    return alloc


def stratified_split(
    ids: Sequence[str],
    labels: Sequence[int],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    class_names: Optional[Sequence[str]] = None,
) -> Dict[str, np.ndarray]:
    """Indices of train/val/test, stratified by label, from ``val_fraction``/``test_fraction``.

    Returns ``{"train": idx, "val": idx, "test": idx}`` (sorted int64 arrays; a split
    whose fraction is 0 is empty). Raises DataError if a class would have no
    training example or a split with a non-zero fraction would come out empty.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    if len(set(map(str, ids))) != len(ids):
        raise ValueError("example ids must be unique")
    ranked = _ranked_by_class(ids, labels, seed, "split")
    sizes = {c: len(v) for c, v in ranked.items()}
    n_test = _allocate(sizes, test_fraction)
    n_val = _allocate({c: n - n_test[c] for c, n in sizes.items()}, val_fraction / max(1e-12, 1 - test_fraction))
    parts: Dict[str, List[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c, idx in ranked.items():
        t, v = n_test[c], n_val[c]
        if t + v >= len(idx):
            name = class_names[c] if class_names is not None else c
            raise DataError(
                f"class {name!r} has {len(idx)} examples: too few to keep one for training after "
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction}; add examples or lower the fractions"
            )
        parts["test"].append(idx[:t])
        parts["val"].append(idx[t : t + v])
        parts["train"].append(idx[t + v :])
    out = {k: np.sort(np.concatenate(v)) if v else np.zeros(0, np.int64) for k, v in parts.items()}
    for split, frac in (("val", val_fraction), ("test", test_fraction)):
        if frac > 0 and len(out[split]) == 0:
            raise DataError(
                f"data.{split}_fraction={frac} of {len(labels)} examples gives an empty {split} split; "
                f"add examples, raise data.{split}_fraction, or set it to 0"
            )
    return out


def nested_subset(
    ids: Sequence[str],
    labels: Sequence[int],
    *,
    seed: int,
    fraction: Optional[float] = None,
    per_class: Optional[int] = None,
) -> np.ndarray:
    """Sorted indices of a stratified subset: ``fraction`` of each class (at least one
    example per class) or the first ``per_class`` of each class (all if fewer).

    Subsets are nested: for one seed, a smaller fraction / per_class is always a
    subset of a larger one, because both are prefixes of the same per-class ranking.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if fraction is None and per_class is None:
        return np.arange(len(labels))
    ranked = _ranked_by_class(ids, labels, seed, "subset")
    keep = []
    for c, idx in ranked.items():
        n = max(1, int(math.ceil(len(idx) * fraction - 1e-9))) if fraction is not None else min(per_class, len(idx))
        keep.append(idx[:n])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def split_hash(ids: Sequence[str]) -> str:
    """A short hash of a split's member list (order-independent)."""
    h = hashlib.sha256()
    for ident in sorted(map(str, ids)):
        h.update(ident.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()[:16]


def class_counts(labels: Sequence[int], num_classes: int) -> List[int]:
    """Examples per class, as a list indexed by label."""
    return [int(n) for n in np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]]


def balanced_class_weights(counts: Sequence[int]) -> Dict[int, float]:
    """``total / (num_classes * count)`` per class (scikit-learn's "balanced"); classes with no
    examples get weight 0 (they never occur in training anyway)."""
    total = float(sum(counts))
    k = len(counts)
    return {i: (total / (k * n) if n else 0.0) for i, n in enumerate(counts)}
