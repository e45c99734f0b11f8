"""Hostile recipes: every malformed input ends in a one-line RecipeError, fast and in bounded memory.

A non-UserError escaping keras_tl.recipe.load() is a bug; so is a message on two lines, one that
does not name the file, or a rejection that takes a second.
"""

import dataclasses
import os
import subprocess
import sys
import time
import tracemalloc
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_tl import recipe as R
from keras_tl.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_SECONDS = 1.0
MAX_PEAK_BYTES = 32 << 20

BILLION_LAUGHS = "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
) + "name: *i\n"

# name → file content (str or bytes). Each must be rejected.
NASTY = {
    "empty": "",
    "only_comment": "# nothing here\n",
    "null_doc": "~\n",
    "scalar_doc": "resnet101\n",
    "list_doc": "- name: x\n",
    "two_docs": "name: a\n---\nname: b\n",
    "tabs": "data:\n\tbatch_size: 8\n",
    "unclosed_flow": "data: {batch_size: 8\n",
    "binary_junk": bytes(range(256)) * 4,
    "nul_byte": b"name: a\x00b\n",
    "latin1": "name: caf\xe9\n".encode("latin-1"),
    "bom_then_junk": b"\xef\xbb\xbf\xff\xfe",
    "unknown_top": "nmae: x\n",
    "unknown_nested": "model: {backbone: resnet101, hed: []}\n",
    "unicode_key": "dätä: {batch_size: 8}\n",
    "emoji_key": "data: {\U0001f600: 1}\n",
    "rtl_override_key": "data: {\"batch\u202e_size\": 1}\n",
    "newline_key": 'data: {"batch\\nsize": 1}\n',
    "escape_seq_key": 'data: {"\\e[31mred": 1}\n',
    "int_key": "data: {1: 2}\n",
    "null_key": "data: {~: 2}\n",
    "list_key": "? [a, b]\n: 1\n",
    "wrong_nesting": "batch_size: 8\n",
    "section_is_list": "data: [batch_size, 8]\n",
    "section_is_scalar": "model: resnet101\n",
    "phase_not_mapping": "train: {phases: [head]}\n",
    "phases_mapping": "train: {phases: {0: {lr: 1}}}\n",
    "wrong_type_str": "data: {batch_size: eight}\n",
    "wrong_type_list": "seed: [1]\n",
    "wrong_type_bool": "data: {deterministic: 1}\n",
    "negative": "data: {batch_size: -8}\n",
    "huge_float_1e400": "train: {phases: [{lr: 1.0e+400}]}\n",
    "huge_float_plain": "train: {phases: [{lr: 1e400}]}\n",
    "huge_int_in_float": "train: {phases: [{lr: " + "1" * 400 + "}]}\n",
    "huge_int_10_100": f"seed: {10 ** 100}\n",
    "huge_int_5000_digits": "seed: " + "7" * 5000 + "\n",
    "huge_image": "data: {image_size: [" + "9" * 50 + ", 64]}\n",
    "nan": "data: {augment: {brightness: .nan}}\n",
    "inf": "data: {val_fraction: .inf}\n",
    "neg_inf": "train: {phases: [{momentum: -.inf}]}\n",
    "sexagesimal": "data: {batch_size: 1:30:00}\n",
    "octal_looking": "data: {split_seed: 0123}\n",
    "bad_date": "seed: 2020-13-45\n",
    "timestamp_tag": "seed: !!timestamp 2020-99-99\n",
    "int_tag": "seed: !!int abc\n",
    "float_tag": "seed: !!float abc\n",
    "binary_tag": "name: !!binary '%%%'\n",
    "set_tag": "name: !!set {a, b}\n",
    "omap_tag": "data: !!omap [{batch_size: 8}]\n",
    "python_object": "name: !!python/object/apply:os.system ['touch /tmp/keras_tl_pwned']\n",
    "python_name": "name: !!python/name:os.system\n",
    "python_module": "name: !!python/module:os\n",
    "custom_tag": "name: !secret x\n",
    "billion_laughs": BILLION_LAUGHS,
    "recursive_alias": "a: &a [*a]\n",
    "merge_alias": "base: &b {batch_size: 8}\ndata:\n  <<: *b\n",
    "duplicate_key": "seed: 1\nseed: 2\n",
    "duplicate_nested": "data:\n  batch_size: 8\n  batch_size: 16\n",
    "deep_list": "seed: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep_map": "seed: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
    "deep_block": "".join(" " * i + f"k{i}:\n" for i in range(200)),
    "deep_in_any": "train: {phases: [{trainable: {patterns: " + "[" * 30 + "]" * 30 + "}}]}\n",
    "many_values": "seed: [" + ", ".join(["1"] * 10000) + "]\n",
    "many_keys": "".join(f"k{i}: {i}\n" for i in range(3000)),
    "long_key": "data: {" + "k" * 50000 + ": 1}\n",
    "long_value": "model: {backbone: " + "x" * 60000 + "}\n",
    "five_mb": "# " + "x" * (5 << 20) + "\nseed: 1\n",
    "bad_literal": "model: {pooling: average}\n",
    "literal_bool": "model: {bn: true}\n",
    "empty_phases": "train: {phases: []}\n",
    "trainable_nested_junk": "train: {phases: [{trainable: {from: [[conv5]]}}]}\n",
    "trainable_bad_regex": "train: {phases: [{trainable: {patterns: ['(']}}]}\n",
    "name_traversal": "name: ../../etc\n",
    "name_newline": 'name: "a\\nb"\n',
    "extends_list": "extends: [a.yaml]\n",
    "extends_int": "extends: 3\n",
    "extends_missing": "extends: does/not/exist.yaml\n",
    "extends_self": "extends: {self}\n",
    "extends_directory": "extends: .\n",
    "extends_nul": 'extends: "a\\0b.yaml"\n',
}


def write_case(tmp_path, name, content):
    path = tmp_path / f"{name}.yaml"
    content = content.replace("{self}", path.name) if isinstance(content, str) else content
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


def assert_rejected(path, overrides=(), *, must_name=None):
    """load() raises a one-line RecipeError naming the file, within MAX_SECONDS; returns the message."""
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        R.load(path, overrides)
    elapsed = time.perf_counter() - start
    assert isinstance(info.value, R.RecipeError), type(info.value)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1 and msg.isprintable(), repr(msg)
    assert len(msg) < 1000, msg[:200]
    assert (must_name or os.path.basename(path)) in msg, msg
    assert elapsed < MAX_SECONDS, f"{elapsed:.2f}s: {msg}"
    return msg


@pytest.mark.parametrize("name", sorted(NASTY))
def test_nasty_recipe_rejected(tmp_path, name):
    path = write_case(tmp_path, name, NASTY[name])
    assert_rejected(path)
    assert not os.path.exists("/tmp/keras_tl_pwned")


def test_extends_cycle_three_files(tmp_path):
    for a, b in (("a", "b"), ("b", "c"), ("c", "a")):
        (tmp_path / f"{a}.yaml").write_text(f"extends: {b}.yaml\n")
    assert "extends cycle: a.yaml -> b.yaml -> c.yaml -> a.yaml" in assert_rejected(str(tmp_path / "a.yaml"))


def test_extends_chain_too_deep(tmp_path):
    n = R.MAX_EXTENDS_DEPTH + 2
    for i in range(n):
        (tmp_path / f"r{i}.yaml").write_text(f"extends: r{i + 1}.yaml\n" if i < n - 1 else "seed: 1\n")
    assert "extends chain deeper than" in assert_rejected(str(tmp_path / "r0.yaml"), must_name="yaml")


def test_extends_to_broken_base(tmp_path):
    (tmp_path / "base.yaml").write_text("data: {bach_size: 8}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\n")
    # Keys are checked after the merge, so the message names the recipe that was loaded.
    assert "data.bach_size: unknown key" in assert_rejected(str(tmp_path / "child.yaml"))


@pytest.mark.parametrize(
    "target", ["dir", "missing", "nul", "fifo_like_dev_zero", "unreadable"]
)
def test_bad_recipe_paths(tmp_path, target):
    if target == "dir":
        path = str(tmp_path)
    elif target == "missing":
        path = str(tmp_path / "nope.yaml")
    elif target == "nul":
        path = str(tmp_path / "a\x00b.yaml")
    elif target == "fifo_like_dev_zero":
        path = "/dev/zero"
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        path = write_case(tmp_path, "unreadable", "seed: 1\n")
        os.chmod(path, 0)
    assert_rejected(path, must_name=os.path.basename(path).replace("\x00", "\\x00"))


def test_remote_recipe_errors_become_recipe_errors(monkeypatch):
    """tf.io.gfile raises tf.errors.*, not OSError; a stand-in TensorFlow keeps this offline."""
    import types

    class NotFoundError(Exception):
        pass

    def gfile(path, mode):
        raise NotFoundError(f"{path}; No such object")

    fake_tf = types.SimpleNamespace(io=types.SimpleNamespace(gfile=types.SimpleNamespace(GFile=gfile)))
    monkeypatch.setitem(sys.modules, "tensorflow", fake_tf)
    assert "No such object" in assert_rejected("gs://bucket/recipe.yaml")


@pytest.mark.parametrize(
    "override",
    [
        "seed=!!python/object/apply:os.system ['true']",
        "seed=" + "[" * 2000,
        "name=*x",
        "name=&a [*a]",
        "data.image_size=[" + "9" * 5000 + ", 64]",
        "train.phases.99999999999999999999.lr=1",
        "train.phases.-1.lr=1",
        "train.phases.0.trainable.patterns.x=1",
        "model.head.0.units=8",
        "data.augment.random_resized_crop.0=0.5",
        "data.batch_size.x=1",
        "data.nope=1",
        "\u202edata.batch_size=1",
        "data.batch\nsize=1",
        "no_equals",
        "=1",
        "a..b=1",
        "train.lr=1e-4",
    ],
)
def test_nasty_overrides_rejected(tmp_path, override):
    path = write_case(tmp_path, "ok", "model: {weights: none}\n")
    msg = assert_rejected(path, [override])
    assert "--set" in msg or "ok.yaml:" in msg


@pytest.mark.parametrize("name", ["billion_laughs", "five_mb", "many_values", "deep_list", "deep_map", "long_key"])
def test_bounded_memory(tmp_path, name):
    path = write_case(tmp_path, name, NASTY[name])
    tracemalloc.start()
    try:
        with pytest.raises(R.RecipeError):
            R.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_PEAK_BYTES, f"{name}: peak {peak / 2**20:.1f} MiB"


# ------------------------------------------------------------ generated recipes


def _leaf_paths(tp=R.Recipe, prefix=""):
    """Every dotted key of the schema (list items at index 0)."""
    out = []
    for f in dataclasses.fields(tp):
        sub_tp = typing.get_type_hints(tp)[f.name]
        key = f"{prefix}{f.name}"
        args = typing.get_args(sub_tp)
        if dataclasses.is_dataclass(sub_tp):
            out += _leaf_paths(sub_tp, key + ".")
        elif typing.get_origin(sub_tp) is tuple and args and dataclasses.is_dataclass(args[0]):
            out += _leaf_paths(args[0], key + ".0.")
        else:
            out.append(key)
    return out


LEAVES = _leaf_paths()

junk_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**100, -(2**63), 2**31, 0, -1, 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "none", "null", "imagenet", "conv5", "head", "all", "off", "1e-4", "\x1b[2J", "\u202e", "a\nb"]),
)
junk = st.recursive(
    junk_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)


@st.composite
def mutated_recipes(draw):
    """A plain recipe dict with a few keys set to junk, misspelt, or wrongly nested."""
    raw: dict = {"model": {"weights": "none"}}
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(LEAVES))
        kind = draw(st.sampled_from(["junk", "typo", "nest", "unknown"]))
        parts = key.split(".")
        if kind == "typo":
            i = draw(st.integers(0, len(parts[-1]) - 1))
            parts[-1] = parts[-1][:i] + parts[-1][i + 1:] + draw(st.sampled_from(["", "x", "_"]))
        elif kind == "nest":
            parts = parts[1:] or ["data", *parts]
        elif kind == "unknown":
            parts = parts[:-1] + [draw(st.text(min_size=1, max_size=10))]
        node = raw
        for j, p in enumerate(parts[:-1]):
            nxt = [] if parts[j + 1].isdigit() else {}
            # An earlier mutation may have left a list where this key needs a mapping (or the
            # reverse): replace it, so the next step can index it.
            if isinstance(node, list):
                while len(node) <= int(p):
                    node.append({})
                if not isinstance(node[int(p)], type(nxt)):
                    node[int(p)] = nxt
                node = node[int(p)]
            else:
                if p.isdigit() or not isinstance(node.get(p), type(nxt)):
                    node[p] = nxt
                node = node[p]
        last = parts[-1]
        value = draw(junk)
        if isinstance(node, list):
            while len(node) <= int(last):
                node.append({})
            node[int(last)] = value
        else:
            node[last] = value
    return raw


def _check_load(tmp_dir, text_or_bytes, overrides=()):
    path = os.path.join(tmp_dir, "gen.yaml")
    data = text_or_bytes.encode("utf-8", "surrogatepass") if isinstance(text_or_bytes, str) else text_or_bytes
    with open(path, "wb") as f:
        f.write(data)
    start = time.perf_counter()
    try:
        recipe = R.load(path, overrides)
    except R.RecipeError as e:
        msg = str(e)
        assert len(msg.splitlines()) == 1 and msg.isprintable(), repr(msg)
        assert "gen.yaml" in msg or msg.startswith("--set"), msg
    else:
        # Accepted: then it must be a real, round-trippable recipe.
        assert R.loads(R.dump(recipe)) == recipe
    assert time.perf_counter() - start < MAX_SECONDS


HYPO = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


@HYPO
@given(raw=mutated_recipes())
def test_generated_malformed_recipes(tmp_path, raw):
    _check_load(str(tmp_path), yaml.safe_dump(raw, allow_unicode=True))


@HYPO
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_generated_junk_files(tmp_path, data):
    _check_load(str(tmp_path), data)


@HYPO
@given(key=st.sampled_from(LEAVES + ["train.phases.3.lr", "model.head.0", "data", "train.phases"]), value=junk)
def test_generated_overrides(tmp_path, key, value):
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    _check_load(str(tmp_path), "model: {weights: none}\n", [f"{key}={text}"])


# ------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("name", ["billion_laughs", "python_object", "binary_junk", "five_mb", "extends_self", "newline_key"])
def test_cli_rejects_hostile_recipe(tmp_path, name):
    path = write_case(tmp_path, name, NASTY[name])
    wd = tmp_path / "wd"
    proc = subprocess.run(
        [sys.executable, "-m", "keras_tl.train", "--recipe", path, "--workdir", str(wd)],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert os.path.basename(path) in proc.stderr
    assert not wd.exists()
    assert not os.path.exists("/tmp/keras_tl_pwned")
