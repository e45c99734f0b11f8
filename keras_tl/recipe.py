"""Recipes: a YAML file → a tree of frozen dataclasses, loaded strictly.

Loading is strict on purpose: a typo such as ``data.bach_size`` would otherwise
silently train with the default batch size, and the resulting numbers would be
reported as evidence for a recipe nobody ran. Every problem raises
:class:`RecipeError` whose message names the file, the dotted key, the value
received and how to fix it. Nothing here imports TensorFlow, so a bad recipe
is rejected in milliseconds, before any compute is spent.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import typing
from typing import Any, Dict, Literal, Optional, Tuple, Union

import yaml

# Recipes are a few KB. PyYAML's pure-Python parser needs ~70 us per value (the C
# parser is barely faster here and overflows the C stack on deep nesting), so these
# limits keep a hostile file's rejection well under a second.
MAX_RECIPE_BYTES = 64 << 10
MAX_YAML_NODES = 2000
MAX_YAML_DEPTH = 32
MAX_EXTENDS_DEPTH = 16


from keras_tl.errors import UserError


class RecipeError(UserError):
    """A recipe or override is invalid; the message is one line meant for a person."""

    def __init__(self, message: str = ""):
        # Keys, values and file names come from the user and may hold newlines or
        # terminal control characters; the CLIs promise exactly one printable line.
        text = _printable(str(message))
        super().__init__(text if len(text) <= 1000 else text[:997] + "...")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _FrozenDict(dict):
    """A read-only, hashable dict: recipes are frozen, including their mapping-valued keys."""

    def _readonly(self, *args, **kwargs):
        raise TypeError("recipe values are read-only; use keras_tl.recipe.replace(recipe, overrides)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly
    __ior__ = _readonly

    def __hash__(self):
        return hash(tuple(sorted(self.items(), key=lambda kv: repr(kv[0]))))

    def __reduce__(self):
        return (type(self), (dict(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def _field(default=dataclasses.MISSING, *, min=None, max=None, factory=None, doc=""):
    meta = {"min": min, "max": max, "doc": doc}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation (applied to the train split only)."""

    flip: bool = True
    rot90: bool = True  # telescope and microscope images have no "up"
    random_resized_crop: Optional[Tuple[float, float]] = None  # area fraction range, e.g. [0.6, 1.0]
    brightness: float = _field(0.0, min=0.0, max=1.0)
    contrast: float = _field(0.0, min=0.0, max=1.0)
    noise: float = _field(0.0, min=0.0, max=255.0)  # stddev of Gaussian noise in pixel units


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """The built-in procedural galaxy dataset (``data.source: synthetic_galaxies``)."""

    count: int = _field(2000, min=10, max=10_000_000)
    survey: str = "decals"
    noise_scale: float = _field(1.0, min=0.0, max=100.0)
    output: Literal["uint8", "float"] = "uint8"
    seed: int = _field(1234, min=0, max=2**31 - 1)  # the dataset's seed, not the run's


@dataclasses.dataclass(frozen=True)
class FitsConfig:
    """FITS files (``.fits``, ``.fits.gz``, ``.fz``) in a directory source."""

    # The HDU holding the image: an index (0 = primary) or an EXTNAME such as SCI. null: the first
    # HDU with image data (the primary, or extension 1 of a tile-compressed .fz); run.json says which.
    hdu: Optional[Union[int, str]] = None


@dataclasses.dataclass(frozen=True)
class Hdf5Config:
    """``data.source: hdf5``: one file (data.path) holding an image array and a label array."""

    images: Optional[str] = None  # dataset of (N, H, W[, C]) images, e.g. images (Galaxy10 DECaLS)
    labels: Optional[str] = None  # dataset of (N,) integer labels, e.g. ans (Galaxy10 DECaLS)
    # A list of names (label i is class_names[i]), or the name of an attribute of the labels
    # dataset (or of the file) holding them. null: the label values themselves ("0", "1", ...).
    class_names: Optional[Union[Tuple[str, ...], str]] = None


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    """Flux scaling into 0..255, per image and band, before the backbone's own preprocessing."""

    # auto: none for 8-bit data, percentile for float data (the choice is measured: README, Data).
    method: Literal["auto", "none", "percentile", "asinh"] = "auto"
    clip: Tuple[float, float] = _field((0.5, 99.5), min=0.0, max=100.0)  # percentiles that map to 0 and 255
    softening: float = _field(0.1, min=1e-4, max=1e4)  # asinh: linear below it, in units of the clip range


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: Literal["directory", "tfds", "synthetic_galaxies", "hdf5"] = "synthetic_galaxies"
    path: Optional[str] = None  # directory source: one subfolder per class (local or gs://); hdf5: the file
    name: Optional[str] = None  # tfds source: dataset name, e.g. "eurosat/rgb"
    data_dir: Optional[str] = None  # tfds data_dir
    train_split: str = "train"
    val_split: Optional[str] = None  # tfds: if None, carved from train with val_fraction
    test_split: Optional[str] = None
    image_key: str = "image"
    label_key: str = "label"
    image_size: Tuple[int, int] = (64, 64)
    channels: int = _field(3, min=1, max=64)
    batch_size: int = _field(32, min=1, max=65536)
    val_fraction: float = _field(0.1, min=0.0, max=0.9)
    test_fraction: float = _field(0.1, min=0.0, max=0.9)
    split_seed: int = _field(0, min=0, max=2**31 - 1)  # splits/subsets stay fixed across run seeds
    fraction: Optional[float] = _field(None, min=0.0, max=1.0)  # nested, stratified train subset
    per_class: Optional[int] = _field(None, min=1, max=10_000_000)
    resize: Literal["resize", "pad", "center_crop"] = "resize"
    augment: AugmentConfig = _field(factory=AugmentConfig)
    cache: str = "memory"  # memory | none | a file path prefix
    shuffle_buffer: int = _field(2048, min=1, max=10_000_000)
    deterministic: bool = False
    class_weights: bool = False
    on_bad_file: Literal["error", "skip"] = "error"
    nan: Literal["error", "zero", "median"] = "error"  # NaN (masked) pixels; median: the band's own median
    scale: ScaleConfig = _field(factory=ScaleConfig)
    fits: FitsConfig = _field(factory=FitsConfig)
    hdf5: Hdf5Config = _field(factory=Hdf5Config)
    synthetic: SyntheticConfig = _field(factory=SyntheticConfig)


# -------------------------------------------------------------------------- model


@dataclasses.dataclass(frozen=True)
class DenseBlock:
    units: int = _field(256, min=1, max=1_000_000)
    activation: str = "relu"
    dropout: float = _field(0.0, min=0.0, max=0.99)
    batch_norm: bool = False
    l2: float = _field(0.0, min=0.0, max=1.0)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet101"
    weights: str = "imagenet"  # imagenet | none | path to .weights.h5/.h5/.keras (local or gs://)
    head: Tuple[DenseBlock, ...] = ()
    head_dropout: float = _field(0.0, min=0.0, max=0.99)  # before the output layer
    pooling: Literal["avg", "max", "flatten"] = "avg"
    cut_after: Optional[str] = None
    reinit: Tuple[str, ...] = ()
    # auto: frozen for pretrained weights (imagenet or a file), train for weights: none — frozen BN
    # with random init never normalises (running stats stay 0/1) and a scratch arm would be crippled.
    bn: Literal["auto", "frozen", "train"] = "auto"
    # Momentum of the backbone's BN moving statistics where BN trains. null: what the backbone was
    # built with (as keras.applications: 0.99; 0.999 for MobileNetV3). Short runs from scratch
    # need less: after 150 steps at 0.99 the statistics still weigh their initial values by 0.22 and
    # a from-scratch EfficientNet-Lite0 scored chance in inference mode while it learned in training
    # mode (README "Evidence"); 0.9 is PyTorch's default (its momentum=0.1).
    bn_momentum: Optional[float] = _field(None, min=0.0, max=1.0)
    conv1_adapt: Literal["mean", "sum"] = "mean"
    output: Literal["multiclass", "multilabel", "binary"] = "multiclass"


# -------------------------------------------------------------------------- train

Trainable = Union[str, Tuple[str, ...], Dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str = ""
    # stage names ([conv4, conv5, head]), "all", "head", {from: conv4}, or
    # {patterns: [regex, ...]} matched against layer names (every pattern must match).
    trainable: Trainable = "head"
    epochs: int = _field(1, min=1, max=100_000)
    steps_per_epoch: Optional[int] = _field(None, min=1, max=10_000_000)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = _field(1e-3, min=0.0, max=10.0)
    momentum: float = _field(0.9, min=0.0, max=1.0)
    weight_decay: float = _field(0.0, min=0.0, max=1.0)  # every optimizer, adamw too: 0 = no decay
    schedule: Literal["constant", "cosine", "step", "linear"] = "constant"
    warmup_epochs: float = _field(0.0, min=0.0, max=100_000)
    step_epochs: Tuple[int, ...] = ()  # for schedule: step
    step_factor: float = _field(0.1, min=0.0, max=1.0)
    label_smoothing: float = _field(0.0, min=0.0, max=0.99)
    lr_multipliers: Dict[str, float] = _field(factory=_FrozenDict)  # stage → multiplier


@dataclasses.dataclass(frozen=True)
class TPUConfig:
    name: Optional[str] = None  # TPU node name, or "local" on a TPU VM
    zone: Optional[str] = None
    project: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    phases: Tuple[Phase, ...] = (Phase(),)
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "auto"
    distribute: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    tpu: TPUConfig = _field(factory=TPUConfig)
    jit_compile: Union[bool, Literal["auto"]] = "auto"
    steps_per_execution: int = _field(1, min=1, max=100_000)
    monitor: str = "val_accuracy"
    early_stopping: Optional[int] = _field(None, min=1, max=100_000)  # patience in epochs
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism
    feature_cache: Literal["auto", "off"] = "auto"  # frozen-backbone fast path
    feature_store: Optional[str] = None  # dir of content-addressed frozen-backbone features shared by runs (a study sets it)
    top_k: int = _field(5, min=1, max=1000)
    tensorboard: bool = True
    # After DONE, checkpoints/ and backup/ are deleted (the export holds the model) unless true.
    keep_checkpoints: bool = False


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    savedmodel: bool = True
    keras: bool = True
    backbone_weights: bool = True
    verify: bool = True


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str = "recipe"
    seed: int = _field(0, min=0, max=2**31 - 1)
    description: str = ""
    data: DataConfig = _field(factory=DataConfig)
    model: ModelConfig = _field(factory=ModelConfig)
    train: TrainConfig = _field(factory=TrainConfig)
    export: ExportConfig = _field(factory=ExportConfig)


# ------------------------------------------------------------------ YAML reading


class _StrictLoader(yaml.SafeLoader):
    """safe_load without aliases (an alias bomb expands exponentially when walked),
    with duplicate keys rejected (the second silently wins otherwise) and with
    bounded size and nesting (so rejection is fast and never a RecursionError)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"YAML aliases (*{event.anchor}) are not allowed in recipes, at {event.start_mark}")
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise yaml.YAMLError(f"more than {MAX_YAML_NODES} values; a recipe is a short file, at {self.peek_event().start_mark}")
        if self._depth >= MAX_YAML_DEPTH:
            raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels, at {self.peek_event().start_mark}")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.YAMLError(f"duplicate key {key!r} {key_node.start_mark}")
            if isinstance(key, (str, int, float, bool)):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Numbers as YAML 1.2 and JSON read them. YAML 1.1 reads 1e-4 as a string (so `lr: 1e-4`
# failed), 0123 as octal 83, 1:30 as 90 (base 60); and 2024-13-45 as a date that crashes.
# Here 1e-4 is a float, 0123 and 1:30 are strings (a loud type error in a number field),
# and recipes hold no dates.
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_NUMBER_TAGS = ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _NUMBER_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """Quotes every string the loader would read back as something else (e.g. "1e-4")."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _flow_depth(text: str) -> int:
    """Deepest nesting of [ and { (counted naively, also inside strings and comments)."""
    depth = deepest = 0
    for c in _NOT_BRACKET.sub("", text):
        depth = depth + 1 if c in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest


_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _parse_yaml(text: str, where: str) -> Any:
    # PyYAML's scanner is quadratic in the open [ and { on one line; refuse before scanning.
    if _flow_depth(text) > 2 * MAX_YAML_DEPTH:
        raise RecipeError(f"{where}: not valid recipe YAML: [ and {{ nested deeper than {2 * MAX_YAML_DEPTH} levels")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (SafeLoader subclass)
    except yaml.YAMLError as e:
        reason = _one_line(e).replace(' in "<unicode string>",', ",")
        raise RecipeError(f"{where}: not valid recipe YAML: {reason}") from None
    except (RecursionError, MemoryError):
        raise RecipeError(f"{where}: YAML nesting too deep or too large") from None
    except (ValueError, OverflowError, TypeError) as e:
        # Raised by scalar constructors, e.g. an integer with more than 4300 digits or `!!int abc`.
        reason = "a number with too many digits" if "digits" in str(e) else _one_line(str(e))[:200]
        raise RecipeError(f"{where}: not valid recipe YAML: cannot read a value: {reason}") from None


def _read_file(path: str) -> str:
    import_path = path
    try:
        if path.startswith("gs://"):
            import tensorflow as tf  # only for remote recipes

            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read(MAX_RECIPE_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise RecipeError(f"{import_path}: recipe file not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{import_path}: is a directory, expected a recipe .yaml file") from None
    except OSError as e:
        raise RecipeError(f"{import_path}: cannot read recipe: {e.strerror or e}") from None
    except ValueError as e:  # e.g. a NUL byte in the path
        raise RecipeError(f"{import_path!r}: not a usable recipe path: {e}") from None
    except Exception as e:  # tf.io.gfile errors (gs://) are not OSErrors
        raise RecipeError(f"{import_path}: cannot read recipe: {_one_line(str(e))[:200]}") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: recipe is larger than {MAX_RECIPE_BYTES} bytes; is this the right file?")
    if b"\x00" in data:
        raise RecipeError(f"{path}: recipe is a binary file, expected YAML text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: recipe is not UTF-8 text") from None


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_raw(path: str, _stack: Tuple[str, ...] = ()) -> dict:
    """The recipe file as a dict with every ``extends`` layer merged in (base first)."""
    path = _as_path(path)
    try:
        key = os.path.realpath(path) if not path.startswith("gs://") else path
    except ValueError as e:  # a NUL byte in the path
        raise RecipeError(f"{path!r}: not a usable recipe path: {e}") from None
    if key in _stack:
        chain = " -> ".join(os.path.basename(p) for p in _stack + (key,))
        raise RecipeError(f"{path}: extends cycle: {chain}; remove one of the extends keys")
    if len(_stack) >= MAX_EXTENDS_DEPTH:
        raise RecipeError(f"{path}: extends chain deeper than {MAX_EXTENDS_DEPTH} files; flatten some of them")
    raw = _parse_yaml(_read_file(path), path)
    if raw is None:
        raise RecipeError(f"{path}: recipe is empty; see recipes/smoke.yaml for a minimal one")
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections (name, seed, data, model, train, export), got {type(raw).__name__}")
    base_ref = raw.pop("extends", None)
    if base_ref is None:
        return raw
    if not isinstance(base_ref, str) or not base_ref:
        raise RecipeError(f"{path}: extends: expected a path to another recipe, got {base_ref!r}")
    if base_ref.startswith("gs://") or os.path.isabs(base_ref):
        base_path = base_ref
    elif path.startswith("gs://"):
        base_path = path.rsplit("/", 1)[0] + "/" + base_ref
    else:
        base_path = os.path.join(os.path.dirname(os.path.abspath(path)), base_ref)
    if not base_path.startswith("gs://") and not os.path.lexists(base_path):
        raise RecipeError(f"{path}: extends: {base_ref}: recipe file not found (looked for {base_path})")
    if not base_path.startswith("gs://") and os.path.isdir(base_path):
        raise RecipeError(f"{path}: extends: {base_ref}: is a directory, expected a recipe .yaml file")
    base = load_raw(base_path, _stack + (key,))
    return _deep_merge(base, raw)


def _as_path(path) -> str:
    try:
        text = os.fspath(path)
    except TypeError:
        text = None
    if not isinstance(text, str) or not text:
        raise RecipeError(f"recipe path: expected a path to a .yaml file, got {_short(path)}")
    return text


# ------------------------------------------------------------- strict building


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, Tuple):
        return "a list"
    if origin in (dict, Dict):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _section_hint(cls, raw) -> str:
    """For a scalar given where a section belongs (``data.scale: asinh``): the key it fits."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) is Literal and raw in typing.get_args(tp) and not isinstance(raw, bool):
            return f" (did you mean {{{f.name}: {raw}}}?)"
    return ""


class _Builder:
    def __init__(self, where: str):
        self.where = where

    def fail(self, path: str, msg: str):
        prefix = f"{self.where}: " if self.where else ""
        raise RecipeError(f"{prefix}{path or '<top>'}: {msg}")

    def build(self, cls, raw: Any, path: str):
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.fail(path, f"expected a mapping of keys, got {_short(raw)}{_section_hint(cls, raw)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in raw.items():
            name = str(key) if len(str(key)) <= 60 else str(key)[:57] + "..."
            sub = f"{path}.{name}" if path else name
            if not isinstance(key, str) or key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else f" (valid keys: {', '.join(fields)})"
                self.fail(sub, f"unknown key{hint}")
            kwargs[key] = self.convert(hints[key], value, sub, fields[key].metadata)
        return cls(**kwargs)

    def convert(self, tp, value, path, meta=None):
        meta = meta or {}
        origin = typing.get_origin(tp)
        if tp is Any:
            return _freeze(value)
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, path)
        if origin is Union:
            args = typing.get_args(tp)
            if value is None:
                if type(None) in args:
                    return None
                self.fail(path, f"expected {_type_name(tp)}, got null")
            errors = []
            for arg in args:
                if arg is type(None):
                    continue
                try:
                    return self.convert(arg, value, path, meta)
                except RecipeError as e:
                    errors.append(e)
            if len(errors) == 1:
                raise errors[0]
            self.fail(path, f"expected {_type_name(tp)}, got {_short(value)}")
        if origin is Literal:
            choices = typing.get_args(tp)
            # YAML 1.1 reads a bare off/on as a boolean: `feature_cache: off` means "off".
            if value is False and "off" in choices:
                return "off"
            if value is True and "on" in choices:
                return "on"
            if isinstance(value, bool) or value not in choices:
                close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                self.fail(path, f"expected one of {', '.join(map(str, choices))}; got {_short(value)}{hint}")
            return value
        if origin in (tuple, Tuple):
            args = typing.get_args(tp)
            if not isinstance(value, (list, tuple)):
                self.fail(path, f"expected a list, got {_short(value)}")
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(self.convert(args[0], v, f"{path}.{i}", meta) for i, v in enumerate(value))
            if len(value) != len(args):
                self.fail(path, f"expected a list of {len(args)} values, got {_short(value)}")
            return tuple(self.convert(a, v, f"{path}.{i}", meta) for i, (a, v) in enumerate(zip(args, value)))
        if origin in (dict, Dict):
            ktp, vtp = typing.get_args(tp)
            if not isinstance(value, dict):
                self.fail(path, f"expected a mapping, got {_short(value)}")
            return _FrozenDict((self.convert(ktp, k, path, {}), self.convert(vtp, v, f"{path}.{k}", meta)) for k, v in value.items())
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(path, f"expected true or false, got {_short(value)}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                    value = int(value)
                else:
                    self.fail(path, f"expected an integer, got {_short(value)}")
            self.check_range(path, value, meta)
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(path, f"expected a number, got {_short(value)}")
            try:
                value = float(value)
            except OverflowError:
                self.fail(path, f"number too large: {_short(value)}")
            if not math.isfinite(value):
                self.fail(path, f"expected a finite number, got {value}")
            self.check_range(path, value, meta)
            return value
        if tp is str:
            if not isinstance(value, str):
                self.fail(path, f"expected a string, got {_short(value)}")
            return value
        raise TypeError(f"recipe schema: unsupported type {tp} at {path}")  # a bug in this file

    def check_range(self, path, value, meta):
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and value < lo:
            self.fail(path, f"must be >= {lo}, got {_short(value)}")
        if hi is not None and value > hi:
            self.fail(path, f"must be <= {hi}, got {_short(value)}")


def _freeze(value):
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return _FrozenDict((k, _freeze(v)) for k, v in value.items())
    return value


# ------------------------------------------------------------------ overrides


def _schema_child(tp, part: str):
    """The type found one step down from ``tp`` along ``part``, or raise KeyError/IndexError."""
    origin = typing.get_origin(tp)
    if origin is Union:
        for arg in typing.get_args(tp):
            if arg is not type(None):
                try:
                    return _schema_child(arg, part)
                except (KeyError, IndexError, TypeError):
                    continue
        raise KeyError(part)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        if part not in hints:
            raise KeyError(part)
        return hints[part]
    if origin in (tuple, Tuple):
        if not part.isdigit():
            raise IndexError(part)
        return typing.get_args(tp)[0]
    if origin in (dict, Dict) or tp is Any:
        return Any
    raise TypeError(part)


def apply_overrides(raw: dict, overrides, schema=None, where: str = "") -> dict:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a raw recipe dict.

    A mapping set on a section (``--set data={batch_size: 8}``) merges into it, as
    ``extends`` does; any other value (lists, ``trainable``, ``lr_multipliers``)
    replaces what was there. ``raw`` is not modified. ``schema``: the dataclass the keys
    are checked against (default :class:`Recipe`; a study section passes its own); ``where``
    (a file name) prefixes error messages.
    """
    return _apply_overrides(raw, overrides, where, schema or Recipe)


def parse_value(text: str, where: str) -> Any:
    """An override's value as ``--set`` reads it (YAML with YAML 1.2 / JSON numbers)."""
    return _parse_yaml(text, where) if text.strip() else ""


def _apply_overrides(raw: dict, overrides, where: str, schema=None) -> dict:
    prefix = f"{where}: " if where else ""
    raw = _deep_merge({}, raw)
    if isinstance(overrides, str):
        overrides = (overrides,)
    for item in overrides or ():
        if not isinstance(item, str) or "=" not in item:
            raise RecipeError(f"{prefix}--set {_short(item)}: expected key=value, e.g. --set model.weights=none")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise RecipeError(f"{prefix}--set {item}: empty key; expected a dotted path such as train.phases.1.lr")

        def fail(msg):
            raise RecipeError(f"{prefix}--set {key}: {msg}")

        value = parse_value(text, f"{prefix}--set {key}")
        types: list = [schema or Recipe]  # types[i]: the schema type at parts[:i]
        for i, part in enumerate(parts):
            tp = types[-1]
            try:
                types.append(_schema_child(tp, part))
            except (KeyError, IndexError, TypeError):
                parent = ".".join(parts[:i])
                where_ = f"{parent}.{part}" if parent else part
                bare = _strip_optional(tp)
                if typing.get_origin(bare) in (tuple, Tuple):
                    fail(f"{where_}: expected a list index 0, 1, ... (or set the whole list: --set {parent}=[...])")
                candidates = [f.name for f in dataclasses.fields(bare)] if dataclasses.is_dataclass(bare) else []
                close = difflib.get_close_matches(part, candidates, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else (f" (valid keys: {', '.join(candidates)})" if candidates else "")
                fail(f"unknown key {where_}{hint}")
        node: Any = raw
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            here = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit():
                    fail(f"{'.'.join(parts[:i])} is a list: expected an index 0, 1, ..., got {part!r}")
                idx = int(part)
                if idx >= len(node):
                    n = len(node)
                    fail(f"index {idx} out of range: {'.'.join(parts[:i])} has {n} entr{'y' if n == 1 else 'ies'}; set the whole list instead")
                slot = idx
            else:
                slot = part
                if not last and slot not in node:
                    node[slot] = _schema_default(types[i], part)
            if last:
                section = dataclasses.is_dataclass(_strip_optional(types[i + 1]))
                old = node[slot] if isinstance(node, list) or slot in node else None
                if section and isinstance(value, dict) and isinstance(old, dict):
                    value = _deep_merge(old, value)
                node[slot] = value
                break
            child = node[slot]
            if child is None:
                child = _schema_default(types[i], part)
            if isinstance(child, dict):
                child = _deep_merge({}, child)
            elif isinstance(child, list):
                child = list(child)
            elif _is_flexible(types[i + 1]):
                # A Union/Any value (e.g. trainable: head) may become a mapping or list.
                child = [] if parts[i + 1].isdigit() else {}
            else:
                fail(f"{here} is {_short(child)}, not a section")
            node[slot] = child
            node = child
    return raw


def _is_flexible(tp) -> bool:
    return tp is Any or typing.get_origin(tp) in (Union, dict, Dict)


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(x) for x in value]
    if isinstance(value, dict):
        return {k: _plain(x) for k, x in value.items()}
    return value


def _schema_default(parent_tp, part: str):
    """The default value, as plain YAML data, of field ``part`` of the section type ``parent_tp``."""
    parent_tp = _strip_optional(parent_tp)
    if dataclasses.is_dataclass(parent_tp):
        for f in dataclasses.fields(parent_tp):
            if f.name == part:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                # Sections start empty (their defaults apply when built); lists such as
                # train.phases are copied so that an index into them can be set.
                return {} if dataclasses.is_dataclass(default) else _plain(default)
    return None


def _strip_optional(tp):
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


# ------------------------------------------------------------------ public API


def from_dict(raw: dict, where: str = "<recipe>", validate_: bool = True) -> Recipe:
    """Build a Recipe from a plain dict, strictly, then run :func:`validate`."""
    recipe = _Builder(where).build(Recipe, raw, "")
    if validate_:
        validate(recipe, where)
    return recipe


def load(path: str, overrides=(), validate_: bool = True) -> Recipe:
    """Load ``path`` (following ``extends``), apply ``--set`` overrides, build and validate."""
    path = _as_path(path)
    raw = load_raw(path)
    raw = _apply_overrides(raw, overrides, path)
    return from_dict(raw, path, validate_)


def to_dict(recipe: Recipe) -> dict:
    """The recipe as plain YAML data (dicts, lists, scalars)."""
    return _plain(recipe)


def dump(recipe: Recipe) -> str:
    """The resolved recipe as YAML; ``loads(dump(r)) == r``."""
    return yaml.dump(to_dict(recipe), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def loads(text: str, where: str = "<string>", validate_: bool = True) -> Recipe:
    raw = _parse_yaml(text, where)
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: a recipe must be a mapping")
    raw.pop("extends", None)
    return from_dict(raw, where, validate_)


def canonical(section) -> dict:
    """A recipe (or any section) as plain data holding only the values that differ from the schema
    defaults; list entries (phases, head blocks) likewise against their own type's defaults.

    Resume checks compare this form: a field added to the schema later, at its default, leaves
    it unchanged, so a run or study written before the field existed still resumes.
    """
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if _plain(value) == _plain(default):
            continue
        if dataclasses.is_dataclass(value):
            out[f.name] = canonical(value)
        elif isinstance(value, tuple) and value and all(dataclasses.is_dataclass(x) for x in value):
            out[f.name] = [canonical(x) for x in value]
        else:
            out[f.name] = _plain(value)
    return out


def same_recipe(text: str, recipe: Recipe) -> bool:
    """Whether the recipe YAML ``text`` (a run's stored recipe.yaml, written by any keras_tl version)
    is ``recipe``: equal :func:`canonical` forms. A text the current schema cannot read is not."""
    try:
        stored = loads(text, "<stored recipe>", validate_=False)
    except RecipeError:
        return False
    return canonical(stored) == canonical(recipe)


def replace(recipe: Recipe, overrides) -> Recipe:
    """A copy of ``recipe`` with ``--set``-style overrides applied (used by studies)."""
    return from_dict(apply_overrides(to_dict(recipe), overrides), f"<{recipe.name}>")


def check_override(recipe: Recipe, key: str, value: Any) -> None:
    """RecipeError unless ``--set key=value`` fits ``recipe``'s schema (known key, type, range).

    Cross-field rules are left to :func:`validate` (a study checks them per arm)."""
    raw = _apply_overrides(to_dict(recipe), [f"{key}={json.dumps(value)}"], "")
    _Builder("").build(Recipe, raw, "")


def build_section(schema, raw: Any, where: str, path: str = ""):
    """The frozen dataclass ``schema`` from plain data, as strictly as a recipe is built
    (unknown keys name the closest valid one; types and ranges are checked)."""
    return _Builder(where).build(schema, raw, path)


# ----------------------------------------------------------------- validation

# keras.activations names (Keras 3), kept here so that validate() needs no TensorFlow.
KERAS_ACTIVATIONS = frozenset(
    "celu elu exponential gelu glu hard_shrink hard_sigmoid hard_silu hard_swish hard_tanh leaky_relu "
    "linear log_sigmoid log_softmax mish relu relu6 selu sigmoid silu soft_shrink softmax softplus "
    "softsign sparse_plus sparse_sigmoid sparsemax squareplus swish tanh tanh_shrink".split()
)


def bn_policy(model: ModelConfig) -> str:
    """The effective BatchNormalization policy, ``frozen`` or ``train`` (resolves ``auto``)."""
    if model.bn != "auto":
        return model.bn
    return "train" if model.weights == "none" else "frozen"


def head_first_on_random_backbone(recipe: Recipe) -> Optional[str]:
    """Why a head-only phase before full training is a trap from random weights, or None.

    With ``model.weights: none`` the frozen backbone's BatchNorm runs in inference mode on untrained
    statistics, so its features barely depend on the image and the head learns the class
    frequencies; its ReLUs can die there, and then no gradient reaches the backbone when the later
    phase unfreezes it. Measured: a from-scratch EfficientNet-Lite0 (64 px, 2,100 images) after 6
    head-only epochs stayed at chance (loss ln 10) for 15 all-layer epochs at lr 1e-3, while the same
    15 epochs without the head-only phase learned (README, Evidence)."""
    if recipe.model.weights != "none":
        return None
    phases = recipe.train.phases
    for i, ph in enumerate(phases[:-1]):
        if ph.trainable == "head" and any(later.trainable != "head" for later in phases[i + 1:]):
            name = f" ({ph.name})" if ph.name else ""
            return (f"train.phases.{i}{name} trains only the head on a random, frozen backbone "
                    f"(model.weights: none), then a later phase unfreezes it: the head learns on features "
                    f"that barely depend on the image and can end dead, leaving the whole model at chance. "
                    f"From scratch, train every layer from the first phase (trainable: all)")
    return None


def stage_list(recipe: Recipe) -> Tuple[str, ...]:
    """The backbone's stages that exist in this model (after ``cut_after``)."""
    from keras_tl import backbones  # registry data only, no TensorFlow import

    stages = backbones.get(recipe.model.backbone).stages
    if recipe.model.cut_after:
        stages = stages[: stages.index(recipe.model.cut_after) + 1]
    return tuple(stages)


def check_trainable(spec, stages, where: str) -> None:
    """Reject a phase's ``trainable`` that names nothing in this model."""
    names = tuple(stages) + ("head",)
    if isinstance(spec, str):
        if spec in ("all", "head", "none") or spec in names:
            return
        close = difflib.get_close_matches(spec, names + ("all",), n=1)
        raise RecipeError(f"{where}: unknown stage {spec!r}{f' (did you mean {close[0]}?)' if close else ''}; valid: all, head, none, {', '.join(names)}")
    if isinstance(spec, tuple):
        if not spec:
            raise RecipeError(f"{where}: empty list; use none to train nothing, or list stages such as [conv5, head]")
        for i, s in enumerate(spec):
            if not isinstance(s, str) or s not in names:
                close = difflib.get_close_matches(str(s), names, n=1)
                raise RecipeError(f"{where}.{i}: unknown stage {_short(s)}{f' (did you mean {close[0]}?)' if close else ''}; valid: {', '.join(names)}")
        return
    if isinstance(spec, dict):
        keys = set(spec)
        if keys == {"from"}:
            if spec["from"] not in stages:
                raise RecipeError(f"{where}.from: unknown stage {_short(spec['from'])}; valid: {', '.join(stages)}")
            return
        if keys == {"patterns"}:
            import re

            pats = spec["patterns"]
            if not isinstance(pats, tuple) or not pats or not all(isinstance(p, str) for p in pats):
                raise RecipeError(f"{where}.patterns: expected a non-empty list of regular expressions")
            for p in pats:
                try:
                    re.compile(p)
                except re.error as e:
                    raise RecipeError(f"{where}.patterns: invalid regular expression {p!r}: {e}") from None
            return
        raise RecipeError(f"{where}: expected {{from: <stage>}} or {{patterns: [regex, ...]}}, got keys {sorted(map(str, keys))}")
    raise RecipeError(f"{where}: expected a stage name, a list of stages, {{from: <stage>}} or {{patterns: [...]}}, got {_short(spec)}")


def validate(recipe: Recipe, where: str = "<recipe>") -> None:
    """Cross-field rules. Runs before TensorFlow builds anything."""

    def fail(key, msg):
        raise RecipeError(f"{where}: {key}: {msg}")

    d = recipe.data
    if not recipe.name or any(c in recipe.name for c in "/\\") or not recipe.name.isprintable() or recipe.name in (".", ".."):
        fail("name", f"must be a non-empty name without path separators, got {_short(recipe.name)}")
    if d.source == "directory" and not d.path:
        fail("data.path", "data.source is directory: set data.path to a folder with one subfolder per class")
    if d.source == "tfds" and not d.name:
        fail("data.name", "data.source is tfds: set data.name to a TFDS dataset name, e.g. eurosat/rgb")
    if d.source == "hdf5":
        if not d.path:
            fail("data.path", "data.source is hdf5: set data.path to the .h5 file")
        for key, example in (("images", "images"), ("labels", "ans")):
            if not getattr(d.hdf5, key):
                fail(f"data.hdf5.{key}", f"data.source is hdf5: name the {key} dataset in the file, e.g. {example} (Galaxy10 DECaLS)")
        if isinstance(d.hdf5.class_names, tuple):
            names = d.hdf5.class_names
            if len(names) < 2 or len(set(names)) != len(names) or any(not n or n != n.strip() or not n.isprintable() for n in names):
                fail("data.hdf5.class_names", f"expected at least 2 distinct, non-empty, printable names, got {_short(list(names))}")
        elif d.hdf5.class_names == "":
            fail("data.hdf5.class_names", "expected a list of names or the name of an attribute holding them, got ''")
    if isinstance(d.fits.hdu, int) and d.fits.hdu < 0:
        fail("data.fits.hdu", f"expected an HDU index >= 0 (0 is the primary) or an extension name, got {d.fits.hdu}")
    if d.fits.hdu == "":
        fail("data.fits.hdu", "expected an HDU index or an extension name such as SCI, got ''")
    lo, hi = d.scale.clip
    if not lo < hi:
        fail("data.scale.clip", f"expected [low, high] percentiles with low < high, got {list(d.scale.clip)}")
    h, w = d.image_size
    if h < 1 or w < 1 or h > 4096 or w > 4096:
        fail("data.image_size", f"each side must be between 1 and 4096 pixels, got {list(d.image_size)}")
    if d.fraction is not None and d.per_class is not None:
        fail("data.fraction", "set data.fraction or data.per_class, not both")
    if d.fraction is not None and d.fraction <= 0:
        fail("data.fraction", f"must be > 0, got {d.fraction}")
    if d.val_fraction + d.test_fraction >= 1.0:
        fail("data.val_fraction", f"val_fraction + test_fraction must be < 1, got {d.val_fraction} + {d.test_fraction}")
    if d.augment.random_resized_crop is not None:
        lo, hi = d.augment.random_resized_crop
        if not 0 < lo <= hi <= 1:
            fail("data.augment.random_resized_crop", f"expected [min, max] with 0 < min <= max <= 1, got {list(d.augment.random_resized_crop)}")
    if d.source == "synthetic_galaxies":
        if d.synthetic.output == "uint8" and d.channels != 3:
            fail("data.channels", f"synthetic uint8 images are RGB (3 channels), got {d.channels}; set data.synthetic.output: float for other band counts")
    _validate_model(recipe, fail)
    _validate_train(recipe, where, fail)


def _validate_model(recipe: Recipe, fail) -> None:
    from keras_tl import backbones

    m = recipe.model
    try:
        entry = backbones.get(m.backbone)
    except KeyError:
        close = difflib.get_close_matches(m.backbone.lower(), backbones.names(), n=1)
        fail("model.backbone", f"unknown backbone {_short(m.backbone)}{f' (did you mean {close[0]}?)' if close else ''}; valid: {', '.join(backbones.names())}")
    if min(recipe.data.image_size) < entry.min_size:
        fail("data.image_size", f"{m.backbone} takes images of at least {entry.min_size} px a side, got {list(recipe.data.image_size)}; "
             f"set data.image_size to at least [{entry.min_size}, {entry.min_size}]")
    if m.cut_after is not None and m.cut_after not in entry.stages:
        fail("model.cut_after", f"unknown stage {m.cut_after!r} for {m.backbone}; valid: {', '.join(entry.stages)}")
    stages = stage_list(recipe)
    for i, s in enumerate(m.reinit):
        if s not in entry.stages:
            fail(f"model.reinit.{i}", f"unknown stage {s!r} for {m.backbone}; valid: {', '.join(entry.stages)}")
        if s not in stages:
            fail(f"model.reinit.{i}", f"stage {s} is removed by model.cut_after: {m.cut_after}")
    if m.weights == "":
        fail("model.weights", "expected imagenet, none or a weights file path")
    if m.weights not in ("imagenet", "none") and not any(c in m.weights for c in "./\\"):
        # Not a path: a misspelt keyword would otherwise be looked up as a file name.
        close = difflib.get_close_matches(m.weights.lower(), ["imagenet", "none"], n=1, cutoff=0.6)
        if close or m.weights.lower() in ("null", "random", "scratch"):
            fail("model.weights", f"got {_short(m.weights)}: use {close[0] if close else 'none'} (or a path to a weights file)")
    for i, block in enumerate(m.head):
        if block.activation not in KERAS_ACTIVATIONS:
            close = difflib.get_close_matches(block.activation, sorted(KERAS_ACTIVATIONS), n=1)
            fail(f"model.head.{i}.activation", f"unknown activation {_short(block.activation)}{f' (did you mean {close[0]}?)' if close else ''}; valid: {', '.join(sorted(KERAS_ACTIVATIONS))}")
    if m.reinit and m.weights == "none":
        fail("model.reinit", "re-initialising stages of a randomly initialised model changes nothing; use model.weights: imagenet or a file")


def _validate_train(recipe: Recipe, where: str, fail) -> None:
    d, t = recipe.data, recipe.train
    if not t.phases:
        fail("train.phases", "at least one phase is needed")
    stages = stage_list(recipe)
    for i, ph in enumerate(t.phases):
        # A phase's name becomes part of file names in the run dir (log_<i>_<name>.csv, tensorboard/<name>).
        if ph.name and (any(c in ph.name for c in "/\\:") or not ph.name.isprintable() or ph.name.strip(".") == ""):
            fail(f"train.phases.{i}.name", f"must be a plain name without path separators or control characters, got {_short(ph.name)}")
        check_trainable(ph.trainable, stages, f"{where}: train.phases.{i}.trainable")
        if ph.lr_multipliers:
            fail(f"train.phases.{i}.lr_multipliers", "per-stage learning rates are not supported with Keras 3 optimizers yet; "
                 "use a separate phase with a lower lr for the deeper stages instead")
        if ph.schedule == "step" and not ph.step_epochs:
            fail(f"train.phases.{i}.step_epochs", "schedule: step needs step_epochs, e.g. [10, 20]")
        prev = 0
        for j, e in enumerate(ph.step_epochs):
            if not prev < e <= ph.epochs:
                fail(f"train.phases.{i}.step_epochs.{j}", f"expected increasing epochs between 1 and the phase's {ph.epochs} epochs, got {list(ph.step_epochs)}")
            prev = e
        if ph.warmup_epochs > ph.epochs:
            fail(f"train.phases.{i}.warmup_epochs", f"{ph.warmup_epochs} is longer than the phase ({ph.epochs} epochs)")
    if t.distribute == "tpu" and t.precision == "mixed_float16":
        fail("train.precision", "TPUs compute in bfloat16: use mixed_bfloat16 or auto")
    if t.jit_compile is True and t.deterministic:
        # Keras compiles without XLA, silently, whenever op determinism is on (model_supports_jit).
        fail("train.jit_compile", "true cannot be combined with train.deterministic: true (Keras turns XLA off under "
             "TensorFlow op determinism); set train.jit_compile: auto for reproducible runs, or train.deterministic: false for XLA")
    if not t.monitor or not t.monitor.replace("_", "").isalnum():
        fail("train.monitor", f"expected a metric name such as val_accuracy or val_loss, got {_short(t.monitor)}")
    if d.val_fraction == 0 and not (d.source == "tfds" and d.val_split):
        fail("data.val_fraction", "0 leaves no validation split, and keras_tl picks each phase's best epoch (train.monitor) on "
             "validation data; set data.val_fraction > 0 (e.g. 0.1), or data.val_split for a tfds source")
