"""Study plans: a study recipe → arms (resolved Recipes) × seeds (× learning rates) → runs.

A study recipe is an ordinary training recipe (``extends:`` and all) plus one
``study:`` section. The section is split off here and the rest goes through
:mod:`keras_tl.recipe` unchanged, so the base recipe is exactly as strict as a
training run; the section itself is built by the same strict loader (:class:`StudySection`)
and ``--set study.*`` goes through the same override path. Every arm is the base recipe
with a few ``--set``-style overrides; the runs of an arm differ only in ``seed`` (the seed
index) and, with an ``lr_grid``, the last phase's learning rate. Splits and subsets stay
fixed because ``data.split_seed`` is never touched.

Axes (each a list; the plan is their product minus ``exclude``, or an explicit
``arms:`` list). Each is one :class:`Axis` record in :data:`AXES`:

========================  =========================================================
``init``                  ``model.weights``: ``imagenet`` | ``none`` | a weights file
                          (or ``{label: name, weights: path}`` to name the arm; add
                          ``set: {recipe key: value}`` for what goes with that init, e.g.
                          ``{label: scratch, weights: none, set: {train.phases.0.trainable: all}}``;
                          ``baseline: {init: scratch}`` names it by label)
``freeze``                the LAST phase's ``trainable``: ``head_only`` → ``head``,
                          ``from_<stage>`` → ``{from: <stage>}``, ``all`` → ``all``
``cut_after``             ``model.cut_after`` (``null`` = the whole backbone)
``reinit``                ``model.reinit`` (a list of stages)
``data_fraction``         ``data.fraction``
``schedule_multiplier``   every phase's ``epochs`` × k (k·epochs must be a whole number)
``vary``                  any recipe key: ``vary: {model.bn: [frozen, train]}``; the key
                          itself is the axis (``baseline: {model.bn: frozen}``, and in
                          ``arms:``/``exclude:`` entries)
========================  =========================================================
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from keras_tl import recipe as recipe_lib
from keras_tl.errors import UserError

MAX_RUNS = 100_000
# Keys an axis may not vary: arms share splits and run seeds (the study sets those itself).
RESERVED_KEYS = {"seed": "study.seeds sets the run seeds", "data.split_seed": "arms must share their splits"}

# Per-run seconds outside the training steps (process start, model build, graph tracing, evaluation,
# export): recipes/study_smoke.yaml's 4 runs of 320 training images each (ResNet-50, 32 px) took
# 2.1 min wall on an idle 2-core machine (issue 17), ~31 s per run of which ~3 s training. The
# earlier 50 s (from CPU-seconds under load) made that plan say ~4-7 min.
SECONDS_PER_RUN_OVERHEAD = 28.0


# ---------------------------------------------------------------- axes


@dataclasses.dataclass(frozen=True)
class Axis:
    """One study axis: how a value is checked, what it changes in the base recipe, how it reads.

    ``check(value, base)`` returns the value normalised to plain JSON data or raises ValueError
    with the reason; ``overrides(value, base)`` gives the ``--set`` strings that put the value into
    ``base``; ``label(value)`` is the short text of arm ids, tables and the verdict; ``context``
    (default: ``label``) the text of report sentences.
    """

    name: str
    check: Callable[[Any, recipe_lib.Recipe], Any]
    overrides: Callable[[Any, recipe_lib.Recipe], List[str]]
    label: Callable[[Any], str]
    context: Optional[Callable[[Any], str]] = None
    label_names_axis: bool = False  # the label already says which axis ("bn=frozen")

    def text(self, value) -> str:
        return (self.context or self.label)(value)

    def describe(self, value) -> str:
        """``axis=value`` (the baseline in the plan and the report)."""
        return self.label(value) if self.label_names_axis else f"{self.name}={self.label(value)}"


def _json_value(v) -> str:
    return json.dumps(v)


def _last_phase(base: recipe_lib.Recipe) -> int:
    return len(base.train.phases) - 1


def freeze_spec(value: str):
    """The ``trainable`` spec a ``freeze`` axis value stands for."""
    if value == "head_only":
        return "head"
    if value == "all":
        return "all"
    return {"from": value[len("from_"):]}


def init_weights(value) -> str:
    return value["weights"] if isinstance(value, dict) else value


def init_label(value) -> str:
    if isinstance(value, dict):
        return value["label"]
    if value == "none":
        return "scratch"
    if value == "imagenet":
        return "imagenet"
    stem = re.split(r"[\\/]", value.rstrip("/"))[-1]
    return "file:" + stem.split(".")[0]


def init_sets(value) -> Dict[str, Any]:
    """The recipe keys an init value sets besides ``model.weights`` (its ``set:`` mapping)."""
    return dict(value.get("set") or {}) if isinstance(value, dict) else {}


def _check_init(value, base):
    if isinstance(value, dict):
        keys = set(value)
        if not ({"label", "weights"} <= keys <= {"label", "weights", "set"}) or not all(
                isinstance(value[k], str) and value[k] for k in ("label", "weights")):
            raise ValueError(f"an init is {{label: <name>, weights: imagenet | none | <path>[, set: {{<recipe key>: value}}]}}, "
                             f"got {value!r}")
        sets = value.get("set")
        if "set" in value and (not isinstance(sets, dict) or not sets or not all(isinstance(k, str) and "." in k for k in sets)):
            raise ValueError(f"set: expected a mapping of dotted recipe keys to values, e.g. {{train.phases.0.trainable: all}}, "
                             f"got {sets!r}")
        for k in sets or ():
            if k in RESERVED_KEYS or k == "model.weights":
                raise ValueError(f"set: {k} cannot be set per init ({RESERVED_KEYS.get(k, 'the init sets it from weights:')})")
        return json.loads(json.dumps(value))
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected imagenet, none, a weights file path or {{label, weights}}, got {value!r}")
    return value


def _check_freeze(value, base):
    if not isinstance(value, str) or not (value in ("head_only", "all") or value.startswith("from_")):
        close = difflib.get_close_matches(str(value), ["head_only", "all", "from_conv5", "from_conv4"], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"expected head_only, all or from_<stage> (e.g. from_conv4), got {value!r}{hint}")
    return value


def _check_cut_after(value, base):
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a stage name or null, got {value!r}")
    return value


def _check_reinit(value, base):
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValueError(f"each value is a list of stages such as [conv5] (or []), got {value!r}")
    return list(value)


def _check_fraction(value, base):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"each value must be a number in (0, 1], got {value!r}")
    return float(value)


def _check_multiplier(value, base):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"each value must be a positive number, got {value!r}")
    for i, ph in enumerate(base.train.phases):
        e = ph.epochs * value
        if abs(e - round(e)) > 1e-9 or round(e) < 1:
            raise ValueError(f"{value!r} × train.phases.{i}.epochs ({ph.epochs}) = {e} is not a whole number of epochs")
    return int(value) if float(value).is_integer() else float(value)


AXES: Dict[str, Axis] = {a.name: a for a in (
    Axis("init", _check_init, lambda v, base: [f"model.weights={_json_value(init_weights(v))}"]
         + [f"{k}={_json_value(x)}" for k, x in init_sets(v).items()], init_label),
    Axis("freeze", _check_freeze,
         lambda v, base: [f"train.phases.{_last_phase(base)}.trainable={_json_value(freeze_spec(v))}"],
         lambda v: v, lambda v: f"freeze {v}"),
    Axis("cut_after", _check_cut_after, lambda v, base: [f"model.cut_after={_json_value(v)}"],
         lambda v: f"cut_after_{v}" if v else "full"),
    Axis("reinit", _check_reinit, lambda v, base: [f"model.reinit={_json_value(list(v))}"],
         lambda v: "reinit_" + "+".join(v) if v else "no_reinit"),
    Axis("data_fraction", _check_fraction, lambda v, base: [f"data.fraction={_json_value(float(v))}"],
         lambda v: f"{v:g}_data", lambda v: f"{v * 100:g}% data"),
    Axis("schedule_multiplier", _check_multiplier,
         lambda v, base: [f"train.phases.{i}.epochs={int(round(ph.epochs * v))}" for i, ph in enumerate(base.train.phases)],
         lambda v: f"x{v:g}_epochs"),
)}


def _compact(value) -> str:
    """A value as short text for labels: scalars as written, lists joined by +, mappings as k:v."""
    if isinstance(value, dict):
        return ",".join(f"{k}:{_compact(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "+".join(_compact(v) for v in value) or "none"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def recipe_key_axis(key: str) -> Axis:
    """The general axis over the recipe key ``key`` (dotted, e.g. ``model.bn``): each value is
    checked by the recipe loader (unknown key, type, range); arm labels read ``bn=frozen``."""
    short = next((p for p in reversed(key.split(".")) if not p.isdigit()), key)

    def check(value, base):
        if key in RESERVED_KEYS:
            raise ValueError(f"{key} cannot be a study axis: {RESERVED_KEYS[key]}")
        try:
            recipe_lib.check_override(base, key, value)
        except recipe_lib.RecipeError as e:
            raise ValueError(str(e)) from None
        return value

    return Axis(key, check, lambda v, base: [f"{key}={_json_value(v)}"], lambda v: f"{short}={_compact(v)}",
                label_names_axis=True)


def axis_for(name: str) -> Axis:
    """The axis called ``name``: a built-in one, else the axis over the recipe key ``name``."""
    return AXES[name] if name in AXES else recipe_key_axis(name)


def axis_overrides(axis: str, value: Any, base: recipe_lib.Recipe) -> List[str]:
    """``--set`` strings that put ``value`` of ``axis`` into ``base``."""
    return axis_for(axis).overrides(value, base)


def value_label(axis: str, value: Any) -> str:
    """Short human text for one axis value (used in slugs, tables and the verdict)."""
    return axis_for(axis).label(value)


# ---------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The ``study:`` section, checked and normalised (axes as tuples of plain values)."""

    axes: Dict[str, Tuple[Any, ...]]  # axis → values, only the axes the study declares
    seeds: int = 3  # seeds per arm; with adaptive seeds the most an arm can get (seeds.max)
    lr_grid: Tuple[float, ...] = ()
    baseline: Dict[str, Any] = dataclasses.field(default_factory=dict)
    metric: str = "accuracy"
    arms: Optional[Tuple[Dict[str, Any], ...]] = None
    exclude: Tuple[Dict[str, Any], ...] = ()
    seconds_per_image: Optional[float] = None
    train_images: Optional[int] = None
    seeds_min: Optional[int] = None  # adaptive seeds (seeds: {min, max, step}): None = a fixed number
    seeds_step: Optional[int] = None
    margin: Optional[float] = None  # equivalence margin in the report's units (points for accuracy)
    resources: Dict[str, float] = dataclasses.field(default_factory=dict)  # per run, for --engine ray

    @property
    def higher_is_better(self) -> bool:
        return not any(w in self.metric for w in ("loss", "error"))

    @property
    def adaptive(self) -> bool:
        return self.seeds_min is not None

    def design(self):
        """The group-sequential design of adaptive seeds (:class:`keras_tl.study.sequential.Design`)."""
        from keras_tl.study import sequential

        return sequential.Design(sequential.schedule(self.seeds_min, self.seeds, self.seeds_step))


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm: the base recipe with ``overrides`` applied. ``values`` holds every axis the study declares."""

    id: str
    label: str
    values: Dict[str, Any]
    overrides: Tuple[str, ...]
    recipe: recipe_lib.Recipe


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: an arm at one seed index (and one learning rate of the grid)."""

    arm_id: str
    seed: int
    lr_index: Optional[int]
    lr: Optional[float]
    recipe: recipe_lib.Recipe

    @property
    def key(self) -> str:
        """Path of the run directory below ``<workdir>/runs``."""
        if self.lr_index is None:
            return f"{self.arm_id}/seed{self.seed}"
        return f"{self.arm_id}/lr{self.lr_index}/seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    source: str
    base: recipe_lib.Recipe
    study: StudyConfig
    arms: Tuple[Arm, ...]
    runs: Tuple[Run, ...]
    varied: Tuple[str, ...]  # axes with more than one value across arms

    def arm(self, arm_id: str) -> Arm:
        for a in self.arms:
            if a.id == arm_id:
                return a
        raise KeyError(arm_id)

    def runs_of(self, arm_id: str) -> Tuple[Run, ...]:
        return tuple(r for r in self.runs if r.arm_id == arm_id)

    def reference_of(self, arm: Arm) -> Optional[Arm]:
        """The baseline arm ``arm`` is compared with: same values except the baseline's axes.

        None when ``arm`` is itself a baseline arm or its counterpart is not in the plan.
        """
        want = dict(arm.values)
        want.update(self.study.baseline)
        if _canon(want) == _canon(arm.values):
            return None
        for other in self.arms:
            if _canon(other.values) == _canon(want):
                return other
        return None

    def to_json(self) -> dict:
        """Everything that defines the plan; two machines sharing a workdir must agree on it."""
        return {
            "name": self.name,
            "source": self.source,
            "study": _study_json(self.study),
            "varied": list(self.varied),
            "base_recipe": recipe_lib.to_dict(self.base),
            "arms": [{"id": a.id, "label": a.label, "values": a.values, "overrides": list(a.overrides)} for a in self.arms],
            "runs": [{"key": r.key, "arm_id": r.arm_id, "seed": r.seed, "lr_index": r.lr_index, "lr": r.lr} for r in self.runs],
        }

    def fingerprint(self) -> str:
        return fingerprint_of(self.to_json())


def fingerprint_of(data: dict) -> str:
    """The fingerprint of a plan's JSON (:meth:`Plan.to_json`, or a plan.json any keras_tl version wrote).

    A hash of the plan without its source path, where the base recipe and the study section keep
    only the values that differ from their schema defaults: a field added to either schema later,
    at its default, leaves every existing study's fingerprint as it was (and its --resume working).
    A base recipe the current schema cannot read raises RecipeError.
    """
    data = {k: v for k, v in data.items() if k not in ("source", "fingerprint")}
    # Where runs execute and where features are stored (content-addressed), not what they compute.
    data["study"] = {k: v for k, v in data["study"].items() if k != "resources"}
    data["base_recipe"] = copy.deepcopy(data["base_recipe"])
    data["base_recipe"].get("train", {}).pop("feature_store", None)
    base = recipe_lib.from_dict(data["base_recipe"], "<plan.json base_recipe>", validate_=False)
    data["base_recipe"] = recipe_lib.canonical(base)
    defaults = _study_json(StudyConfig(axes={}))
    data["study"] = {k: v for k, v in data["study"].items() if k == "axes" or k not in defaults or _canon(v) != _canon(defaults[k])}
    return hashlib.sha256(_canon(data).encode()).hexdigest()[:16]


def _study_json(s: StudyConfig) -> dict:
    d = dataclasses.asdict(s)
    d["axes"] = {k: list(v) for k, v in s.axes.items()}
    return json.loads(json.dumps(d, default=list))


def _canon(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=list, separators=(",", ":"))


# ---------------------------------------------------------------- loading


def _meta(lo=None, hi=None):
    return {"min": lo, "max": hi}


@dataclasses.dataclass(frozen=True)
class StudySection:
    """The ``study:`` section's schema, built by the recipe loader (unknown keys, types, ranges).

    The axis values are typed ``Any`` here: each :class:`Axis` checks its own.
    """

    init: Any = None
    freeze: Any = None
    cut_after: Any = None
    reinit: Any = None
    data_fraction: Any = None
    schedule_multiplier: Any = None
    vary: Optional[Dict[str, Any]] = None  # recipe key → values
    seeds: Any = 3  # a number of seeds (1..1000), or {min, max, step} for adaptive seeds: checked by _seeds
    lr_grid: Optional[Tuple[float, ...]] = None
    baseline: Optional[Dict[str, Any]] = None
    metric: str = "accuracy"
    arms: Optional[Tuple[Dict[str, Any], ...]] = None
    exclude: Optional[Tuple[Dict[str, Any], ...]] = None
    seconds_per_image: Optional[float] = None
    train_images: Optional[int] = dataclasses.field(default=None, metadata=_meta(1))
    margin: Optional[float] = None  # equivalence margin (metric points), adaptive seeds only
    resources: Optional[Dict[str, float]] = None  # {cpus, gpus, tpus, memory_gb} per run (--engine ray)


RESOURCE_KEYS = ("cpus", "gpus", "tpus", "memory_gb")


@dataclasses.dataclass(frozen=True)
class _StudyFile:
    """The root ``--set study.*`` overrides walk from."""

    study: StudySection = dataclasses.field(default_factory=StudySection)


def _fail(where: str, key: str, msg: str):
    raise UserError(f"{where}: study.{key}: {msg}")


def load_study(path: str, overrides: Sequence[str] = ()) -> Tuple[recipe_lib.Recipe, StudyConfig]:
    """Read a study recipe: (base Recipe, StudyConfig). ``study.*`` overrides go to the study section."""
    raw = recipe_lib.load_raw(path)
    study_raw = raw.pop("study", None)
    if not isinstance(study_raw, dict):
        raise UserError(f"{path}: no study: section (a mapping); add one, e.g. study: {{init: [imagenet, none], seeds: 3}}")
    study_over = [o for o in overrides if isinstance(o, str) and o.strip().startswith("study.") and "=" in o]
    recipe_over = [o for o in overrides if o not in study_over]
    study_over = _set_mapping_entries(study_raw, study_over, path)
    study_raw = recipe_lib.apply_overrides({"study": study_raw}, study_over, schema=_StudyFile, where=path)["study"]
    raw = recipe_lib.apply_overrides(raw, recipe_over, where=path)
    base = recipe_lib.from_dict(raw, path)
    return base, parse_study(study_raw, base, path)


def _set_mapping_entries(study_raw: dict, overrides: Sequence[str], where: str) -> List[str]:
    """Apply ``study.vary.<recipe key>=v`` and ``study.baseline.<axis>=v``: one entry of that
    mapping, whose key may hold dots and list indices (``study.vary.train.phases.1.lr=[...]``).
    Values are read as every ``--set`` value is. Returns the other overrides."""
    rest = []
    for item in overrides:
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) > 2 and parts[1] in ("vary", "baseline") and all(parts[2:]):
            mapping = study_raw.get(parts[1])
            entry = {".".join(parts[2:]): recipe_lib.parse_value(text, f"{where}: --set {key.strip()}")}
            study_raw[parts[1]] = {**(mapping if isinstance(mapping, dict) else {}), **entry}
        else:
            rest.append(item)
    return rest


def _as_list(where, key, value) -> list:
    if not isinstance(value, list) or not value:
        _fail(where, key, f"expected a non-empty list of values, got {value!r}")
    return list(value)


def _check_value(where: str, key: str, axis: str, value: Any, base: recipe_lib.Recipe) -> Any:
    """``value`` of ``axis`` normalised by its Axis, or a UserError naming ``study.<key>``."""
    try:
        return axis_for(axis).check(value, base)
    except ValueError as e:
        _fail(where, key, str(e))


def _flat_keys(mapping: dict, is_axis: Callable[[str], bool], prefix: str = "") -> dict:
    """``{model: {bn: x}}`` (what ``--set study.baseline.model.bn=x`` builds) → ``{"model.bn": x}``;
    a mapping under a name ``is_axis`` accepts is a value and stays whole."""
    out = {}
    for k, v in mapping.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and not is_axis(name):
            out.update(_flat_keys(v, is_axis, name + "."))
        else:
            out[name] = v
    return out


def _check_mapping(where: str, key: str, value: Any, axes_ok: Sequence[str], base) -> Dict[str, Any]:
    if not isinstance(value, dict) or not value:
        _fail(where, key, f"expected a mapping of axis → value, e.g. {{init: none}}, got {value!r}")
    out = {}
    for k, v in _flat_keys(value, lambda n: n in axes_ok).items():
        if k not in axes_ok:
            close = difflib.get_close_matches(str(k), list(axes_ok), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]}?)" if close else f" (study axes: {', '.join(axes_ok)})"
            _fail(where, f"{key}.{k}", f"not an axis of this study{hint}")
        out[k] = _check_value(where, f"{key}.{k}", k, v, base)
    return out


def _declared_axes(raw: dict, base, where: str) -> Dict[str, tuple]:
    """The axis lists the section declares: the built-in ones, then every ``vary`` key."""
    lists = {axis: (axis, raw[axis]) for axis in AXES if axis in raw}
    for key, values in _flat_keys(raw.get("vary") or {}, lambda n: False).items():
        if key in AXES:
            _fail(where, f"vary.{key}", f"{key} is a study axis of its own; write study.{key}: [...]")
        lists[key] = (f"vary.{key}", values)
    axes = {}
    for axis, (where_key, values) in lists.items():
        norm = tuple(_check_value(where, where_key, axis, v, base) for v in _as_list(where, where_key, values))
        if len({_canon(v) for v in norm}) != len(norm):
            _fail(where, where_key, f"repeated value in {list(values)!r}")
        axes[axis] = norm
    return axes


def _is_recipe_key(name: str) -> bool:
    return "." in name


def _explicit_arms(raw: dict, base, where: str) -> Tuple[tuple, Dict[str, tuple]]:
    """The ``arms:`` list, each arm checked; (arms, axes derived from them). An arm sets built-in
    axes and dotted recipe keys (``model.bn: train``)."""
    arms = []
    for i, a in enumerate(_as_list(where, "arms", raw["arms"])):
        keys = _flat_keys(a, lambda n: n in AXES or _is_recipe_key(n)) if isinstance(a, dict) else {}
        arms.append(_check_mapping(where, f"arms.{i}", a, list(AXES) + [k for k in keys if _is_recipe_key(k)], base))
    named = list(AXES) + [k for arm in arms for k in arm if k not in AXES]
    declared = list(dict.fromkeys(k for k in named if any(k in arm for arm in arms)))
    for i, arm in enumerate(arms):
        missing = [a for a in declared if a not in arm]
        if missing:
            _fail(where, f"arms.{i}", f"missing {', '.join(missing)}: every explicit arm sets the same axes ({', '.join(declared)})")
    return tuple(arms), {a: tuple(_dedupe([arm[a] for arm in arms])) for a in declared}


def _check_disjoint(axes: Dict[str, tuple], lr_grid, base, where: str) -> None:
    """No recipe key is set by two axes (or by an axis and the lr_grid)."""
    owner: Dict[str, str] = {}
    if lr_grid:
        owner[f"train.phases.{_last_phase(base)}.lr"] = "lr_grid"
    for axis, values in axes.items():
        keys = dict.fromkeys(over.split("=", 1)[0] for v in values for over in axis_for(axis).overrides(v, base))
        for key in keys:
            if key in owner:
                _fail(where, axis if axis in AXES else f"vary.{axis}", f"sets {key}, which study.{owner[key]} sets too; vary it in one place")
            owner[key] = axis


def parse_study(raw: dict, base: recipe_lib.Recipe, where: str = "<study>") -> StudyConfig:
    """Check the ``study:`` mapping strictly; unknown keys name the closest valid key."""
    section = recipe_lib.build_section(StudySection, raw, where, "study")
    axes = _declared_axes(raw, base, where)
    arms = None
    if raw.get("arms") is not None:
        if axes:
            _fail(where, "arms", f"give either axis lists ({', '.join(axes)}) or an explicit arms: list, not both")
        arms, axes = _explicit_arms(raw, base, where)
    if not axes:
        _fail(where, "init", f"the study varies nothing: declare at least one axis ({', '.join(AXES)}, vary) or arms:")
    seeds, seeds_min, seeds_step = _seeds(where, section.seeds)
    margin = section.margin
    if margin is not None:
        if not margin > 0:
            _fail(where, "margin", f"expected a positive number of metric points (e.g. 2 for 2 accuracy points), got {margin!r}")
        if seeds_min is None:
            _fail(where, "margin", "equivalence is decided only with adaptive seeds; set seeds: {min: 3, max: 12}, or drop margin")
    lr_grid = tuple(section.lr_grid or ())
    if lr_grid and seeds_min is not None:
        # The learning rate is picked on the mean over seeds, so it could change as seeds are added,
        # and the comparisons already decided would then be about other runs.
        _fail(where, "lr_grid", "cannot be combined with adaptive seeds ({min, max}); pick the rate first, or use a fixed number of seeds")
    if not all(0 < v <= 10 for v in lr_grid):
        _fail(where, "lr_grid", f"expected learning rates in (0, 10], got {list(lr_grid)!r}")
    _check_disjoint(axes, lr_grid, base, where)
    if not re.fullmatch(r"[A-Za-z0-9_]+", section.metric):
        _fail(where, "metric", f"expected a metric name such as accuracy or loss, got {section.metric!r}")
    baseline = raw.get("baseline")
    if baseline is None:
        first = next(iter(axes))
        baseline = {first: axes[first][0]}
    else:
        baseline = _check_mapping(where, "baseline", baseline, list(axes), base)
        for k, v in list(baseline.items()):
            if k == "init" and isinstance(v, str):  # an init given by its label
                v = baseline[k] = next((x for x in axes[k] if x == v), None) or next(
                    (x for x in axes[k] if init_label(x) == v), v)
            if _canon(v) not in {_canon(x) for x in axes[k]}:
                _fail(where, f"baseline.{k}", f"{v!r} is not one of the study's values {list(axes[k])!r}")
    exclude = tuple(
        _check_mapping(where, f"exclude.{i}", e, list(axes), base) for i, e in enumerate(_as_list(where, "exclude", raw["exclude"]))
    ) if raw.get("exclude") else ()
    spi = section.seconds_per_image
    if spi is not None and spi <= 0:
        _fail(where, "seconds_per_image", f"expected a positive number, got {spi!r}")
    resources = dict(section.resources or {})
    for k, v in resources.items():
        if k not in RESOURCE_KEYS:
            _fail(where, f"resources.{k}", f"unknown resource; use {', '.join(RESOURCE_KEYS)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            _fail(where, f"resources.{k}", f"expected a number >= 0, got {v!r}")
    return StudyConfig(axes=axes, seeds=seeds, lr_grid=lr_grid, baseline=baseline, metric=section.metric,
                       arms=arms, exclude=exclude, seconds_per_image=spi, train_images=section.train_images,
                       seeds_min=seeds_min, seeds_step=seeds_step, margin=margin,
                       resources=resources)


SEEDS_KEYS = ("min", "max", "step")


def _seeds(where: str, seeds: Any) -> Tuple[int, Optional[int], Optional[int]]:
    """``study.seeds``: a number (→ (n, None, None)) or adaptive ``{min, max, step}`` (→ (max, min, step)),
    the latter checked by :func:`keras_tl.study.sequential.schedule`."""
    if not isinstance(seeds, dict):
        if isinstance(seeds, bool) or not isinstance(seeds, int):
            _fail(where, "seeds", f"expected an integer number of seeds (1..1000), or {{min: 3, max: 12}} for adaptive seeds, got {seeds!r}")
        if not 1 <= seeds <= 1000:
            _fail(where, "seeds", f"must be between 1 and 1000, got {seeds}")
        return seeds, None, None
    from keras_tl.study import sequential

    for key in seeds:
        if key not in SEEDS_KEYS:
            close = difflib.get_close_matches(str(key), SEEDS_KEYS, n=1, cutoff=0.5)
            _fail(where, f"seeds.{key}", "unknown key" + (f" (did you mean {close[0]}?)" if close else f" (valid keys: {', '.join(SEEDS_KEYS)})"))
    for key in ("min", "max"):
        if key not in seeds:
            _fail(where, "seeds", f"adaptive seeds need min and max, e.g. {{min: 3, max: 12}}; {key} is missing")
    if isinstance(seeds["max"], int) and not isinstance(seeds["max"], bool) and seeds["max"] > 1000:
        _fail(where, "seeds.max", f"{seeds['max']} is more than 1000 seeds")
    try:
        sequential.schedule(seeds["min"], seeds["max"], seeds.get("step"), where="study.seeds")
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return seeds["max"], seeds["min"], seeds.get("step")


def _dedupe(values):
    seen, out = set(), []
    for v in values:
        if _canon(v) not in seen:
            seen.add(_canon(v))
            out.append(v)
    return out


# ---------------------------------------------------------------- expansion


def _slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s[:limit].rstrip("-.") or "arm"


def _matches(values: dict, partial: dict) -> bool:
    return all(_canon(values.get(k)) == _canon(v) for k, v in partial.items())


def _make_arm(combo: dict, axes: Sequence[str], varied: Sequence[str], base, source: str) -> Arm:
    overrides: List[str] = []
    for axis in axes:
        overrides += axis_overrides(axis, combo[axis], base)
    label = ", ".join(value_label(a, combo[a]) for a in (varied or axes))
    digest = hashlib.sha256(_canon(sorted(overrides)).encode()).hexdigest()[:8]
    arm_id = f"{_slug('_'.join(value_label(a, combo[a]) for a in (varied or axes)))}-{digest}"
    try:
        arm_recipe = recipe_lib.replace(base, overrides)
    except UserError as e:
        raise UserError(
            f"{source}: study arm {{{label}}} is not a valid recipe: {e}; drop the combination with study.exclude or use an explicit arms: list"
        ) from None
    return Arm(id=arm_id, label=label, values=combo, overrides=tuple(overrides), recipe=arm_recipe)


def expand(base: recipe_lib.Recipe, study: StudyConfig, source: str = "<study>", name: Optional[str] = None) -> Plan:
    """The plan: every arm resolved into a validated Recipe, and every (arm, lr, seed) run."""
    axes = list(study.axes)
    if study.arms is not None:
        combos = [dict(a) for a in study.arms]
    else:
        combos = [dict(zip(axes, vals)) for vals in itertools.product(*(study.axes[a] for a in axes))]
    combos = [c for c in combos if not any(_matches(c, e) for e in study.exclude)]
    if not combos:
        raise UserError(f"{source}: study.exclude removes every arm; loosen it")
    varied = tuple(a for a in axes if len({_canon(c[a]) for c in combos}) > 1)
    arms: List[Arm] = []
    seen_ids = {}
    for combo in combos:
        arm = _make_arm(combo, axes, varied, base, source)
        if arm.id in seen_ids:
            raise UserError(f"{source}: study arms {seen_ids[arm.id]} and {arm.label} are the same training recipe; remove one")
        seen_ids[arm.id] = arm.label
        arms.append(arm)
    lr_grid = study.lr_grid or (None,)
    n_runs = len(arms) * len(lr_grid) * study.seeds
    if n_runs > MAX_RUNS:
        raise UserError(f"{source}: the study expands to {n_runs} runs (more than {MAX_RUNS}); reduce axes or seeds")
    last = _last_phase(base)
    runs: List[Run] = []
    # Seed-major order: an interrupted study still holds complete, paired seed sets.
    for seed in range(study.seeds):
        for arm in arms:
            for j, lr in enumerate(lr_grid):
                over = [f"seed={seed}"]
                if lr is not None:
                    over.append(f"train.phases.{last}.lr={lr!r}")
                runs.append(
                    Run(arm_id=arm.id, seed=seed, lr_index=None if lr is None else j, lr=lr, recipe=recipe_lib.replace(arm.recipe, over))
                )
    return Plan(name=name or base.name, source=source, base=base, study=study, arms=tuple(arms), runs=tuple(runs), varied=varied)


def load_plan(path: str, overrides: Sequence[str] = ()) -> Plan:
    """:func:`load_study` then :func:`expand`."""
    base, study = load_study(path, overrides)
    return expand(base, study, source=path)


# ---------------------------------------------------------------- inputs


def missing_weights(plan: Plan, *, fetch: bool = True) -> List[str]:
    """One message per weights source (backbone and model.weights) of the plan that cannot be provided.

    Each source is resolved once, here, before the first run: ImageNet files are downloaded
    (``fetch``) and verified now, so the runs find them in the cache. ``fetch=False`` only checks.
    """
    from keras_tl import weights as weights_lib

    seen, problems = set(), []
    for arm in plan.arms:
        key = (arm.recipe.model.backbone, arm.recipe.model.weights)
        if key in seen:
            continue
        seen.add(key)
        try:
            weights_lib.resolve_weights(arm.recipe, fetch=fetch)
        except UserError as e:
            problems.append(f"arm {arm.id} (model.weights={key[1]}): {e}")
    return problems


# ---------------------------------------------------------------- cost


def train_images_per_epoch(recipe: recipe_lib.Recipe, study: Optional[StudyConfig] = None) -> Optional[int]:
    """Training images one epoch of the last phase sees; None when the source size is unknown here."""
    d = recipe.data
    steps = recipe.train.phases[-1].steps_per_epoch
    if steps is not None:
        return steps * d.batch_size
    if d.source == "synthetic_galaxies":
        total = d.synthetic.count
    elif study is not None and study.train_images is not None:
        total = int(study.train_images / (1 - d.val_fraction - d.test_fraction)) if d.val_split is None else study.train_images
    else:
        return None
    n_train = total * (1 - d.val_fraction - d.test_fraction) if d.val_split is None else total
    if d.per_class is not None:
        return None
    return max(1, int(n_train * (d.fraction if d.fraction is not None else 1.0)))


def images_per_run(recipe: recipe_lib.Recipe, study: Optional[StudyConfig] = None) -> Optional[int]:
    total = 0
    for ph in recipe.train.phases:
        if ph.steps_per_epoch is not None:
            per_epoch = ph.steps_per_epoch * recipe.data.batch_size
        else:
            per_epoch = train_images_per_epoch(recipe, study)
            if per_epoch is None:
                return None
        total += per_epoch * ph.epochs
    return total


def default_seconds_per_image(recipe: recipe_lib.Recipe) -> float:
    """The backbone record's rough CPU cost (64 px, 2 cores, every layer training), scaled by pixel
    count above 64 px. --seconds_per_image or --measure_cost give a figure that fits your machine."""
    from keras_tl import backbones

    h, w = recipe.data.image_size
    s = backbones.get(recipe.model.backbone).seconds_per_image_64px or backbones.DEFAULT_SECONDS_PER_IMAGE
    # Below 64 px per-step overheads dominate, so smaller images are not proportionally cheaper.
    return s * max(1.0, (h * w) / (64 * 64))


def measure_seconds_per_image(recipe: recipe_lib.Recipe, batches: int = 3) -> float:
    """Time a few training steps of ``recipe``'s model (every layer trainable) on random pixels."""
    import time

    import numpy as np

    from keras_tl import distribute
    from keras_tl import model as model_lib

    # Timing does not depend on the weights' values; "none" keeps this offline.
    timed = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, weights="none", reinit=()))
    m = model_lib.build_model(timed, 2)
    m.trainable = True
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=distribute.jit_for(recipe))
    h, w = recipe.data.image_size
    bs = recipe.data.batch_size
    x = np.random.default_rng(0).uniform(0, 255, (bs, h, w, recipe.data.channels)).astype("float32")
    y = np.zeros((bs,), "int32")
    m.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(batches):
        m.train_on_batch(x, y)
    return (time.perf_counter() - t0) / (batches * bs)


@dataclasses.dataclass(frozen=True)
class Cost:
    runs: int
    epochs: int  # summed over runs
    images: Optional[int]  # training images summed over runs
    seconds_per_image: float
    seconds_per_image_source: str
    cpu_seconds: Optional[float]  # training images × seconds_per_image + runs × overhead_per_run
    overhead_per_run: float = SECONDS_PER_RUN_OVERHEAD


def estimate_cost(plan: Plan, seconds_per_image: Optional[float] = None, source: str = "") -> Cost:
    """Runs × epochs × images, and CPU time at ``seconds_per_image`` (default: study key, then the table)."""
    if seconds_per_image is None and plan.study.seconds_per_image is not None:
        seconds_per_image, source = plan.study.seconds_per_image, "study.seconds_per_image"
    if seconds_per_image is None:
        from keras_tl import backbones

        seconds_per_image = default_seconds_per_image(plan.base)
        name = plan.base.model.backbone
        if backbones.get(name).seconds_per_image_64px is None:
            name += " (not measured: the fallback figure)"
        source = f"rough default for {name} at {plan.base.data.image_size[0]}x{plan.base.data.image_size[1]} px"
    epochs, images = 0, 0
    for run in plan.runs:
        epochs += sum(ph.epochs for ph in run.recipe.train.phases)
        n = images_per_run(run.recipe, plan.study)
        images = None if (images is None or n is None) else images + n
    # Evaluation (forward only, about a third of a training step) is left out: it is small
    # next to training unless the validation split is large.
    cpu = images * seconds_per_image + len(plan.runs) * SECONDS_PER_RUN_OVERHEAD if images is not None else None
    return Cost(len(plan.runs), epochs, images, seconds_per_image, source or "given", cpu)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_plan(plan: Plan, cost: Cost, adaptive_lines: Sequence[str] = ()) -> str:
    """The plan as printed before anything runs (``adaptive_lines``: :func:`keras_tl.study.adaptive.plan_lines`)."""
    s = plan.study
    seeds_text = f"{s.seeds_min}-{s.seeds} seeds (adaptive)" if s.adaptive else f"{s.seeds} seeds"
    lines = [f"study {plan.name} ({plan.source}): {len(plan.arms)} arms × {seeds_text}"
             + (f" × {len(s.lr_grid)} learning rates" if s.lr_grid else "") + f" = {len(plan.runs)} runs",
             f"  varied: {', '.join(plan.varied) or '(single arm)'}; baseline: "
             + ", ".join(axis_for(k).describe(v) for k, v in s.baseline.items())
             + f"; metric: test {s.metric}" + (" (lr picked on validation)" if s.lr_grid else ""),
             f"  splits fixed by data.split_seed={plan.base.data.split_seed}; run seeds 0..{s.seeds - 1}",
             "  arms:"]
    lines[-1:-1] = list(adaptive_lines)
    width = max(len(a.id) for a in plan.arms)
    for a in plan.arms:
        ref = plan.reference_of(a)
        n_img = images_per_run(a.recipe, s)
        epochs = sum(ph.epochs for ph in a.recipe.train.phases)
        lines.append(f"    {a.id:<{width}}  {epochs:>4} epochs  {n_img if n_img is not None else '?':>9} images/run  "
                     + (f"vs {ref.id}" if ref else "(baseline)"))
    img = f"{cost.images:,}" if cost.images is not None else "unknown (set study.train_images)"
    lines.append(f"  cost: {cost.runs} runs, {cost.epochs} epochs, {img} training images")
    if cost.cpu_seconds is not None:
        lines.append(f"  CPU time ≈ {_duration(cost.cpu_seconds)} at {cost.seconds_per_image:.4g} s/image ({cost.seconds_per_image_source})"
                     f" + {cost.overhead_per_run:g} s/run start-up, evaluation and export")
    return "\n".join(lines)
