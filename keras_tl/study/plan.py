"""Study plans: a study recipe → arms (resolved Recipes) × seeds (× learning rates) → runs.

A study recipe is an ordinary training recipe (``extends:`` and all) plus one
``study:`` section. The section is split off here and the rest goes through
:mod:`keras_tl.recipe` unchanged, so the base recipe is exactly as strict as a
training run. Every arm is the base recipe with a few ``--set``-style overrides;
the runs of an arm differ only in ``seed`` (the seed index) and, with an
``lr_grid``, the last phase's learning rate. Splits and subsets stay fixed
because ``data.split_seed`` is never touched.

Axes (each a list; the plan is their product minus ``exclude``, or an explicit
``arms:`` list):

========================  =========================================================
``init``                  ``model.weights``: ``imagenet`` | ``none`` | a weights file
                          (or ``{label: name, weights: path}`` to name the file arm)
``freeze``                the LAST phase's ``trainable``: ``head_only`` → ``head``,
                          ``from_<stage>`` → ``{from: <stage>}``, ``all`` → ``all``
``cut_after``             ``model.cut_after`` (``null`` = the whole backbone)
``reinit``                ``model.reinit`` (a list of stages)
``data_fraction``         ``data.fraction``
``schedule_multiplier``   every phase's ``epochs`` × k (k·epochs must be a whole number)
========================  =========================================================
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from keras_tl import recipe as recipe_lib
from keras_tl.errors import UserError

AXES = ("init", "freeze", "cut_after", "reinit", "data_fraction", "schedule_multiplier")
STUDY_KEYS = AXES + (
    "seeds",
    "lr_grid",
    "baseline",
    "metric",
    "arms",
    "exclude",
    "seconds_per_image",
    "train_images",
)
MAX_RUNS = 100_000

# Rough CPU training cost (seconds per image, 64x64 px, 2 cores, batch 32, every layer training),
# scaled by pixel count above 64 px. resnet101: DESIGN.md's ~50-60 images/s; mobilenetv3small:
# keras.applications + train_on_batch on this machine; resnet50: resnet101 × their FLOPs ratio.
# Pass --seconds_per_image or --measure_cost for a figure that fits your machine.
DEFAULT_SECONDS_PER_IMAGE_64PX = {
    "mobilenetv3small": 0.0020,
    "resnet50": 0.0100,
    "resnet101": 0.0190,
}
DEFAULT_SECONDS_PER_IMAGE_FALLBACK = 0.0190
# Per-run CPU seconds outside the training steps (model build, graph tracing, evaluation, export):
# recipes/study_smoke.yaml used 241 CPU-s for 4 runs of 640 training images each (ResNet-50, 32 px).
SECONDS_PER_RUN_OVERHEAD = 50.0


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The ``study:`` section, checked and normalised (axes as tuples of plain values)."""

    axes: Dict[str, Tuple[Any, ...]]  # axis → values, only the axes the study declares
    seeds: int = 3
    lr_grid: Tuple[float, ...] = ()
    baseline: Dict[str, Any] = dataclasses.field(default_factory=dict)
    metric: str = "accuracy"
    arms: Optional[Tuple[Dict[str, Any], ...]] = None
    exclude: Tuple[Dict[str, Any], ...] = ()
    seconds_per_image: Optional[float] = None
    train_images: Optional[int] = None

    @property
    def higher_is_better(self) -> bool:
        return not any(w in self.metric for w in ("loss", "error"))


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
        data = self.to_json()
        data.pop("source")
        return hashlib.sha256(_canon(data).encode()).hexdigest()[:16]


def _study_json(s: StudyConfig) -> dict:
    d = dataclasses.asdict(s)
    d["axes"] = {k: list(v) for k, v in s.axes.items()}
    return json.loads(json.dumps(d, default=list))


def _canon(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=list, separators=(",", ":"))


# ---------------------------------------------------------------- loading


def _fail(where: str, key: str, msg: str):
    raise UserError(f"{where}: study.{key}: {msg}")


def _set_dotted(study: dict, item: str, where: str) -> None:
    key, text = item.split("=", 1)
    parts = key.strip().split(".")[1:]
    if not parts or any(not p for p in parts):
        raise UserError(f"--set {item}: expected study.<key>=value, e.g. --set study.seeds=2")
    value = yaml.safe_load(text) if text.strip() else ""
    node = study
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[parts[-1]] = value


def load_study(path: str, overrides: Sequence[str] = ()) -> Tuple[recipe_lib.Recipe, StudyConfig]:
    """Read a study recipe: (base Recipe, StudyConfig). ``study.*`` overrides go to the study section."""
    raw = recipe_lib.load_raw(path)
    study_raw = raw.pop("study", None)
    if not isinstance(study_raw, dict):
        raise UserError(f"{path}: no study: section (a mapping); add one, e.g. study: {{init: [imagenet, none], seeds: 3}}")
    study_over = [o for o in overrides if isinstance(o, str) and o.strip().startswith("study.") and "=" in o]
    recipe_over = [o for o in overrides if o not in study_over]
    for item in study_over:
        _set_dotted(study_raw, item, path)
    raw = recipe_lib.apply_overrides(raw, recipe_over)
    base = recipe_lib.from_dict(raw, path)
    return base, parse_study(study_raw, base, path)


def _as_list(where, key, value) -> tuple:
    if not isinstance(value, list) or not value:
        _fail(where, key, f"expected a non-empty list of values, got {value!r}")
    return tuple(value)


def _check_axis_value(where: str, axis: str, value: Any, base: recipe_lib.Recipe) -> Any:
    """Normalise one axis value (or raise naming it); returns a JSON-able plain value."""
    if axis == "init":
        if isinstance(value, dict):
            if set(value) != {"label", "weights"} or not all(isinstance(v, str) and v for v in value.values()):
                _fail(where, axis, f"a file arm is {{label: <name>, weights: <path>}}, got {value!r}")
            return dict(value)
        if not isinstance(value, str) or not value:
            _fail(where, axis, f"expected imagenet, none, a weights file path or {{label, weights}}, got {value!r}")
        return value
    if axis == "freeze":
        if not isinstance(value, str) or not (value in ("head_only", "all") or value.startswith("from_")):
            close = difflib.get_close_matches(str(value), ["head_only", "all", "from_conv5", "from_conv4"], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            _fail(where, axis, f"expected head_only, all or from_<stage> (e.g. from_conv4), got {value!r}{hint}")
        return value
    if axis == "cut_after":
        if value is not None and not isinstance(value, str):
            _fail(where, axis, f"expected a stage name or null, got {value!r}")
        return value
    if axis == "reinit":
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            _fail(where, axis, f"each value is a list of stages such as [conv5] (or []), got {value!r}")
        return list(value)
    if axis == "data_fraction":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            _fail(where, axis, f"each value must be a number in (0, 1], got {value!r}")
        return float(value)
    if axis == "schedule_multiplier":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            _fail(where, axis, f"each value must be a positive number, got {value!r}")
        for i, ph in enumerate(base.train.phases):
            e = ph.epochs * value
            if abs(e - round(e)) > 1e-9 or round(e) < 1:
                _fail(where, axis, f"{value!r} × train.phases.{i}.epochs ({ph.epochs}) = {e} is not a whole number of epochs")
        return int(value) if float(value).is_integer() else float(value)
    raise AssertionError(axis)


def _check_mapping(where: str, key: str, value: Any, axes_ok: Sequence[str], base) -> Dict[str, Any]:
    if not isinstance(value, dict) or not value:
        _fail(where, key, f"expected a mapping of axis → value, e.g. {{init: none}}, got {value!r}")
    out = {}
    for k, v in value.items():
        if k not in axes_ok:
            close = difflib.get_close_matches(str(k), list(axes_ok), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]}?)" if close else f" (study axes: {', '.join(axes_ok)})"
            _fail(where, f"{key}.{k}", f"not an axis of this study{hint}")
        out[k] = _check_axis_value(where, k, v, base)
    return out


def parse_study(raw: dict, base: recipe_lib.Recipe, where: str = "<study>") -> StudyConfig:
    """Check the ``study:`` mapping strictly; unknown keys name the closest valid key."""
    for key in raw:
        if key not in STUDY_KEYS:
            close = difflib.get_close_matches(str(key), STUDY_KEYS, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]}?)" if close else f" (valid keys: {', '.join(STUDY_KEYS)})"
            _fail(where, str(key), f"unknown key{hint}")
    axes = {}
    for axis in AXES:
        if axis in raw:
            values = _as_list(where, axis, raw[axis])
            norm = tuple(_check_axis_value(where, axis, v, base) for v in values)
            if len({_canon(v) for v in norm}) != len(norm):
                _fail(where, axis, f"repeated value in {list(values)!r}")
            axes[axis] = norm
    arms = None
    if raw.get("arms") is not None:
        if axes:
            _fail(where, "arms", f"give either axis lists ({', '.join(axes)}) or an explicit arms: list, not both")
        arms_raw = _as_list(where, "arms", raw["arms"])
        arms = tuple(_check_mapping(where, f"arms.{i}", a, AXES, base) for i, a in enumerate(arms_raw))
        declared = [a for a in AXES if any(a in arm for arm in arms)]
        for i, arm in enumerate(arms):
            missing = [a for a in declared if a not in arm]
            if missing:
                _fail(where, f"arms.{i}", f"missing {', '.join(missing)}: every explicit arm sets the same axes ({', '.join(declared)})")
        axes = {a: tuple(_dedupe([arm[a] for arm in arms])) for a in declared}
    if not axes:
        _fail(where, "init", "the study varies nothing: declare at least one axis (init, freeze, cut_after, reinit, data_fraction, schedule_multiplier) or arms:")
    seeds = raw.get("seeds", 3)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= 1000:
        _fail(where, "seeds", f"expected a whole number of seeds between 1 and 1000, got {seeds!r}")
    lr_grid = raw.get("lr_grid") or ()
    if lr_grid:
        lr_grid = _as_list(where, "lr_grid", lr_grid)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 10 for v in lr_grid):
            _fail(where, "lr_grid", f"expected learning rates in (0, 10], got {list(lr_grid)!r}")
        lr_grid = tuple(float(v) for v in lr_grid)
    metric = raw.get("metric", "accuracy")
    if not isinstance(metric, str) or not re.fullmatch(r"[A-Za-z0-9_]+", metric):
        _fail(where, "metric", f"expected a metric name such as accuracy or loss, got {metric!r}")
    baseline = raw.get("baseline")
    if baseline is None:
        first = next(iter(axes))
        baseline = {first: axes[first][0]}
    else:
        baseline = _check_mapping(where, "baseline", baseline, list(axes), base)
        for k, v in baseline.items():
            if _canon(v) not in {_canon(x) for x in axes[k]}:
                _fail(where, f"baseline.{k}", f"{v!r} is not one of the study's values {list(axes[k])!r}")
    exclude = tuple(
        _check_mapping(where, f"exclude.{i}", e, list(axes), base) for i, e in enumerate(_as_list(where, "exclude", raw["exclude"]))
    ) if raw.get("exclude") else ()
    spi = raw.get("seconds_per_image")
    if spi is not None and (isinstance(spi, bool) or not isinstance(spi, (int, float)) or spi <= 0):
        _fail(where, "seconds_per_image", f"expected a positive number, got {spi!r}")
    n_train = raw.get("train_images")
    if n_train is not None and (isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1):
        _fail(where, "train_images", f"expected a positive whole number, got {n_train!r}")
    return StudyConfig(
        axes=axes,
        seeds=seeds,
        lr_grid=lr_grid,
        baseline=baseline,
        metric=metric,
        arms=arms,
        exclude=exclude,
        seconds_per_image=float(spi) if spi is not None else None,
        train_images=n_train,
    )


def _dedupe(values):
    seen, out = set(), []
    for v in values:
        if _canon(v) not in seen:
            seen.add(_canon(v))
            out.append(v)
    return out


# ---------------------------------------------------------------- expansion


def _json_value(v) -> str:
    return json.dumps(v)


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


def axis_overrides(axis: str, value: Any, base: recipe_lib.Recipe) -> List[str]:
    """``--set`` strings that put ``value`` of ``axis`` into ``base``."""
    last = len(base.train.phases) - 1
    if axis == "init":
        return [f"model.weights={_json_value(init_weights(value))}"]
    if axis == "freeze":
        return [f"train.phases.{last}.trainable={_json_value(freeze_spec(value))}"]
    if axis == "cut_after":
        return [f"model.cut_after={_json_value(value)}"]
    if axis == "reinit":
        return [f"model.reinit={_json_value(list(value))}"]
    if axis == "data_fraction":
        return [f"data.fraction={_json_value(float(value))}"]
    if axis == "schedule_multiplier":
        return [f"train.phases.{i}.epochs={int(round(ph.epochs * value))}" for i, ph in enumerate(base.train.phases)]
    raise AssertionError(axis)


def value_label(axis: str, value: Any) -> str:
    """Short human text for one axis value (used in slugs, tables and the verdict)."""
    if axis == "init":
        return init_label(value)
    if axis == "freeze":
        return value
    if axis == "cut_after":
        return f"cut_after_{value}" if value else "full"
    if axis == "reinit":
        return "reinit_" + "+".join(value) if value else "no_reinit"
    if axis == "data_fraction":
        return f"{value:g}_data"
    if axis == "schedule_multiplier":
        return f"x{value:g}_epochs"
    raise AssertionError(axis)


def _slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s[:limit].rstrip("-.") or "arm"


def _matches(values: dict, partial: dict) -> bool:
    return all(_canon(values.get(k)) == _canon(v) for k, v in partial.items())


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
        overrides: List[str] = []
        for axis in axes:
            overrides += axis_overrides(axis, combo[axis], base)
        label = ", ".join(value_label(a, combo[a]) for a in (varied or axes))
        digest = hashlib.sha256(_canon(sorted(overrides)).encode()).hexdigest()[:8]
        arm_id = f"{_slug('_'.join(value_label(a, combo[a]) for a in (varied or axes)))}-{digest}"
        if arm_id in seen_ids:
            raise UserError(f"{source}: study arms {seen_ids[arm_id]} and {label} are the same training recipe; remove one")
        seen_ids[arm_id] = label
        try:
            arm_recipe = recipe_lib.replace(base, overrides)
        except UserError as e:
            raise UserError(
                f"{source}: study arm {{{label}}} is not a valid recipe: {e}; drop the combination with study.exclude or use an explicit arms: list"
            ) from None
        arms.append(Arm(id=arm_id, label=label, values=combo, overrides=tuple(overrides), recipe=arm_recipe))
    lr_grid = study.lr_grid or (None,)
    n_runs = len(arms) * len(lr_grid) * study.seeds
    if n_runs > MAX_RUNS:
        raise UserError(f"{source}: the study expands to {n_runs} runs (more than {MAX_RUNS}); reduce axes or seeds")
    last = len(base.train.phases) - 1
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
    return Plan(
        name=name or base.name,
        source=source,
        base=base,
        study=study,
        arms=tuple(arms),
        runs=tuple(runs),
        varied=varied,
    )


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
    h, w = recipe.data.image_size
    s = DEFAULT_SECONDS_PER_IMAGE_64PX.get(recipe.model.backbone, DEFAULT_SECONDS_PER_IMAGE_FALLBACK)
    # Below 64 px per-step overheads dominate, so smaller images are not proportionally cheaper.
    return s * max(1.0, (h * w) / (64 * 64))


def measure_seconds_per_image(recipe: recipe_lib.Recipe, batches: int = 3) -> float:
    """Time a few training steps of ``recipe``'s model (every layer trainable) on random pixels."""
    import time

    import numpy as np

    from keras_tl import model as model_lib

    # Timing does not depend on the weights' values; "none" keeps this offline.
    timed = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, weights="none", reinit=()))
    m = model_lib.build_model(timed, 2)
    m.trainable = True
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
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
        seconds_per_image = default_seconds_per_image(plan.base)
        source = f"rough default for {plan.base.model.backbone} at {plan.base.data.image_size[0]}x{plan.base.data.image_size[1]} px"
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


def format_plan(plan: Plan, cost: Cost) -> str:
    """The plan as printed before anything runs."""
    s = plan.study
    lines = [f"study {plan.name} ({plan.source}): {len(plan.arms)} arms × {s.seeds} seeds"
             + (f" × {len(s.lr_grid)} learning rates" if s.lr_grid else "") + f" = {len(plan.runs)} runs",
             f"  varied: {', '.join(plan.varied) or '(single arm)'}; baseline: "
             + ", ".join(f"{k}={value_label(k, v)}" for k, v in s.baseline.items())
             + f"; metric: test {s.metric}" + (" (lr picked on validation)" if s.lr_grid else ""),
             f"  splits fixed by data.split_seed={plan.base.data.split_seed}; run seeds 0..{s.seeds - 1}",
             "  arms:"]
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
