"""Splits and nested subsets: pure functions of (ids, labels, seed), stratified."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_tl.data import split as S
from keras_tl.errors import DataError


def _toy(n_per_class=(50, 30, 20)):
    ids, labels = [], []
    for c, n in enumerate(n_per_class):
        ids += [f"class{c}/img_{i:04d}.png" for i in range(n)]
        labels += [c] * n
    return ids, np.asarray(labels)


def _members(ids, idx):
    return {ids[i] for i in idx}


def test_split_is_deterministic_and_order_independent():
    ids, labels = _toy()
    a = S.stratified_split(ids, labels, val_fraction=0.2, test_fraction=0.1, seed=3)
    b = S.stratified_split(ids, labels, val_fraction=0.2, test_fraction=0.1, seed=3)
    perm = np.random.default_rng(0).permutation(len(ids))
    ids_p, labels_p = [ids[i] for i in perm], labels[perm]
    c = S.stratified_split(ids_p, labels_p, val_fraction=0.2, test_fraction=0.1, seed=3)
    for s in ("train", "val", "test"):
        assert np.array_equal(a[s], b[s])
        assert _members(ids, a[s]) == _members(ids_p, c[s])
    d = S.stratified_split(ids, labels, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert _members(ids, a["val"]) != _members(ids, d["val"])


def test_split_is_a_stratified_partition():
    ids, labels = _toy((50, 30, 20))
    parts = S.stratified_split(ids, labels, val_fraction=0.2, test_fraction=0.1, seed=0)
    allidx = np.concatenate([parts["train"], parts["val"], parts["test"]])
    assert sorted(allidx.tolist()) == list(range(len(ids)))
    assert S.class_counts(labels[parts["val"]], 3) == [10, 6, 4]
    assert S.class_counts(labels[parts["test"]], 3) == [5, 3, 2]
    assert S.class_counts(labels[parts["train"]], 3) == [35, 21, 14]


def test_zero_fraction_gives_empty_split():
    ids, labels = _toy()
    parts = S.stratified_split(ids, labels, val_fraction=0.2, test_fraction=0.0, seed=0)
    assert len(parts["test"]) == 0 and len(parts["val"]) == 20


def test_split_errors_name_the_class_and_the_key():
    ids, labels = _toy((10, 1))
    with pytest.raises(DataError, match=r"class 'b' has 1 examples.*val_fraction"):
        S.stratified_split(ids, labels, val_fraction=0.5, test_fraction=0.4, seed=0, class_names=["a", "b"])
    ids, labels = _toy((2, 2))
    with pytest.raises(DataError, match=r"data.val_fraction=0.05 .* empty val split"):
        S.stratified_split(ids, labels, val_fraction=0.05, test_fraction=0.0, seed=0)


def test_subsets_are_nested_and_stratified():
    ids, labels = _toy((100, 40, 20))
    prev = set()
    for f in (0.05, 0.1, 0.25, 0.5, 1.0):
        idx = S.nested_subset(ids, labels, seed=7, fraction=f)
        cur = _members(ids, idx)
        assert prev <= cur
        assert S.class_counts(labels[idx], 3) == [int(np.ceil(n * f)) for n in (100, 40, 20)]
        prev = cur
    assert len(prev) == len(ids)
    prev = set()
    for k in (1, 5, 30, 1000):
        idx = S.nested_subset(ids, labels, seed=7, per_class=k)
        cur = _members(ids, idx)
        assert prev <= cur
        assert S.class_counts(labels[idx], 3) == [min(k, n) for n in (100, 40, 20)]
        prev = cur
    # a different seed picks different members
    assert _members(ids, S.nested_subset(ids, labels, seed=8, fraction=0.1)) != _members(
        ids, S.nested_subset(ids, labels, seed=7, fraction=0.1)
    )


def test_tiny_fraction_keeps_one_per_class():
    ids, labels = _toy((10, 3))
    idx = S.nested_subset(ids, labels, seed=0, fraction=0.01)
    assert S.class_counts(labels[idx], 2) == [1, 1]


def test_split_hash_depends_on_members_only():
    assert S.split_hash(["a", "b"]) == S.split_hash(["b", "a"])
    assert S.split_hash(["a", "b"]) != S.split_hash(["a", "c"])


def test_balanced_class_weights():
    w = S.balanced_class_weights([30, 10, 20])
    assert w == pytest.approx({0: 60 / 90, 1: 60 / 30, 2: 60 / 60})
    assert sum(w[i] * n for i, n in enumerate([30, 10, 20])) == pytest.approx(60)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(3, 40), min_size=2, max_size=5),
    val=st.floats(0.0, 0.3),
    test=st.floats(0.0, 0.3),
    seed=st.integers(0, 2**31 - 1),
)
def test_split_properties(sizes, val, test, seed):
    ids, labels = _toy(tuple(sizes))
    try:
        parts = S.stratified_split(ids, labels, val_fraction=val, test_fraction=test, seed=seed)
    except DataError:
        return
    allidx = np.concatenate([parts["train"], parts["val"], parts["test"]])
    assert sorted(allidx.tolist()) == list(range(len(ids)))  # disjoint and complete
    assert all(n >= 1 for n in S.class_counts(labels[parts["train"]], len(sizes)))
    assert len(parts["test"]) == round(len(ids) * test)
    assert abs(len(parts["val"]) - len(ids) * val) <= len(sizes) + 1
