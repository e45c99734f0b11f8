"""Which layers train in a phase, the BatchNormalization policy, and the per-stage summary table.

Units of control are the backbone's stages (``backbones.Backbone.stages``, after any cut) plus
``head`` (``pool`` and every layer after it). A phase's ``trainable`` is one of:

- ``all`` | ``head`` | ``none`` | a stage name | a list of stage names (may include ``head``);
- ``{from: <stage>}``: that stage, every later stage present, and the head;
- ``{patterns: [regex, ...]}``: exactly the layers whose name fully matches one of the regexes
  (backbone layer names, or head layer names such as ``head_dense_0``, ``predictions``); every
  pattern must match at least one layer.

BN policy (``model.bn``; ``auto``, the default, means ``frozen`` for pretrained weights and
``train`` for ``weights: none``): ``frozen`` keeps every backbone BatchNormalization layer at
``trainable=False`` even inside trainable stages; in Keras 3 that also makes it run in
inference mode (moving statistics used, never updated; gamma/beta fixed). ``train`` lets BN in
trainable stages train like any other layer. Head BN layers are new, so they follow the head.
"""

from __future__ import annotations

import re
from typing import Dict, List

from keras_tl import backbones
from keras_tl import recipe as recipe_lib
from keras_tl.errors import UserError

HEAD = "head"


def _entry(model):
    return backbones.get(model.get_layer("preprocess").backbone)


def present_stages(model) -> List[str]:
    """The backbone stages this model contains (after cut_after), in order."""
    entry = _entry(model)
    found = {backbones.stage_of(entry, l.name) for l in model.get_layer("backbone").layers}
    return [s for s in entry.stages if s in found]


def _units(model):
    """(layer, unit) for every top-level backbone layer and every head layer."""
    entry = _entry(model)
    out = []
    for layer in model.get_layer("backbone").layers:
        stage = backbones.stage_of(entry, layer.name)
        if stage is not None:
            out.append((layer, stage))
    names = [l.name for l in model.layers]
    for layer in model.layers[names.index("pool") :]:
        out.append((layer, HEAD))
    return out


def _is_bn(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def _walk(layer):
    yield layer
    for sub in getattr(layer, "layers", None) or ():
        yield from _walk(sub)


def _selected(spec, stages, units, where):
    """The set of layer names that train under ``spec``."""
    if isinstance(spec, dict) and set(spec) == {"patterns"}:
        pats = spec["patterns"]
        if isinstance(pats, str) or not pats:
            raise UserError(f"{where}.patterns: expected a non-empty list of regular expressions")
        chosen = set()
        for p in pats:
            try:
                rx = re.compile(p)
            except re.error as e:
                raise UserError(f"{where}.patterns: invalid regular expression {p!r}: {e}") from None
            hits = {l.name for l, _ in units if rx.fullmatch(l.name)}
            if not hits:
                raise UserError(f"{where}.patterns: {p!r} matches no layer (patterns must match whole layer names, e.g. 'conv5_.*')")
            chosen |= hits
        return chosen
    valid = tuple(stages) + (HEAD,)
    if isinstance(spec, dict) and set(spec) == {"from"}:
        start = spec["from"]
        if start not in stages:
            raise UserError(f"{where}.from: stage {start!r} is not in this model; valid: {', '.join(stages)}")
        on = set(stages[stages.index(start) :]) | {HEAD}
    elif spec == "all":
        on = set(valid)
    elif spec == "none":
        on = set()
    elif isinstance(spec, str):
        on = {spec}
    elif isinstance(spec, (tuple, list)) and spec:
        on = set(spec)
    else:
        raise UserError(f"{where}: expected all, head, none, a stage, a list of stages, {{from: stage}} or {{patterns: [...]}}, got {spec!r}")
    for s in sorted(on - set(valid)):
        raise UserError(f"{where}: stage {s!r} matches nothing in this model; valid: all, none, {', '.join(valid)}")
    return {l.name for l, unit in units if unit in on}


def apply_phase(model, phase, recipe) -> List[Dict]:
    """Set ``layer.trainable`` for ``phase`` and the BN policy; return the per-stage table rows.

    Recompile the model afterwards: Keras collects trainable weights at compile time.
    """
    spec = getattr(phase, "trainable", phase)
    name = getattr(phase, "name", "") or "phase"
    where = f"train.phases[{name}].trainable"
    units = _units(model)
    chosen = _selected(spec, present_stages(model), units, where)
    model.trainable = True  # Keras propagates this to every nested layer; then switch off per unit
    for layer, _ in units:
        layer.trainable = layer.name in chosen
    if recipe_lib.bn_policy(recipe.model) == "frozen":
        # Pretrained BN statistics describe the source domain at large batches; updating them from
        # small batches of a new domain wrecks them (Keras transfer-learning guide), so backbone BN
        # stays in inference mode with fixed gamma/beta even where the surrounding stage trains.
        for layer in model.get_layer("backbone").layers:
            for sub in _walk(layer):
                if _is_bn(sub):
                    sub.trainable = False
    return stage_table(model, recipe)


def _count(weights) -> int:
    total = 0
    for w in weights:
        n = 1
        for d in w.shape:
            n *= int(d)
        total += n
    return total


def stage_table(model, recipe=None) -> List[Dict]:
    """One row per stage present (then ``head``): layers, trainable and frozen parameter counts.

    BN moving statistics are never trained by gradient, so they always count as frozen.
    """
    rows = {s: {"stage": s, "layers": 0, "trainable_params": 0, "frozen_params": 0} for s in present_stages(model) + [HEAD]}
    for layer, unit in _units(model):
        row = rows[unit]
        row["layers"] += 1
        row["trainable_params"] += _count(layer.trainable_weights)
        row["frozen_params"] += _count(layer.non_trainable_weights)
    return list(rows.values())


def format_table(rows) -> str:
    """The rows as an aligned text table with a total line."""
    head = ("stage", "layers", "trainable", "frozen")
    body = [(r["stage"], str(r["layers"]), f"{r['trainable_params']:,}", f"{r['frozen_params']:,}") for r in rows]
    total = ("total", str(sum(r["layers"] for r in rows)), f"{sum(r['trainable_params'] for r in rows):,}", f"{sum(r['frozen_params'] for r in rows):,}")
    table = [head] + body + [total]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    fmt = lambda row: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row))  # noqa: E731
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(head), rule] + [fmt(r) for r in body] + [rule, fmt(total)])
