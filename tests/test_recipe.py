"""Strict recipe loading: messages, extends, --set overrides, validate(), dump/load round trip, CLI."""

import copy
import glob
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

from keras_tl import recipe as R
from keras_tl.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, text):
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text))
    return str(path)


def load_text(tmp_path, text, name="x.yaml", overrides=()):
    return R.load(write(tmp_path / name, text), overrides)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(R.RecipeError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


def build(*sets, validate=True):
    """A validated recipe from --set overrides on an empty recipe (weights: none, small image)."""
    return R.from_dict(R.apply_overrides({}, ("model.weights=none",) + sets), "r.yaml", validate)


# ----------------------------------------------------------------- strict loading


def test_unknown_key_names_file_dotted_key_and_closest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("recipes/x.yaml", "data:\n  bach_size: 8\n")
    assert error_of(R.load, "recipes/x.yaml") == "recipes/x.yaml: data.bach_size: unknown key (did you mean batch_size?)"


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    msg = error_of(load_text, tmp_path, "export:\n  zzz: true\n")
    assert msg.endswith("x.yaml: export.zzz: unknown key (valid keys: savedmodel, keras, backbone_weights, verify)")


def test_unknown_key_deep_in_a_list(tmp_path):
    msg = error_of(load_text, tmp_path, "train:\n  phases:\n    - lr: 0.1\n    - lr: 0.1\n      epoch: 2\n")
    assert msg.endswith("x.yaml: train.phases.1.epoch: unknown key (did you mean epochs?)")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("data: {batch_size: abc}", "data.batch_size: expected an integer, got 'abc'"),
        ("data: {batch_size: 2.5}", "data.batch_size: expected an integer, got 2.5"),
        ("data: {batch_size: true}", "data.batch_size: expected an integer, got True"),
        ("data: {batch_size: 0}", "data.batch_size: must be >= 1, got 0"),
        ("data: {batch_size: 100000}", "data.batch_size: must be <= 65536, got 100000"),
        ("data: {val_fraction: 0.95}", "data.val_fraction: must be <= 0.9, got 0.95"),
        ("data: {channels: [3]}", "data.channels: expected an integer, got [3]"),
        ("data: {image_size: [64]}", "data.image_size: expected a list of 2 values, got [64]"),
        ("data: {image_size: 64}", "data.image_size: expected a list, got 64"),
        ("data: {augment: {flip: 1}}", "data.augment.flip: expected true or false, got 1"),
        ("data: {augment: {noise: .nan}}", "data.augment.noise: expected a finite number, got nan"),
        ("train: {phases: [{lr: .inf}]}", "train.phases.0.lr: expected a finite number, got inf"),
        ("train: {phases: [{lr: -0.1}]}", "train.phases.0.lr: must be >= 0.0, got -0.1"),
        ("model: {pooling: average}", "model.pooling: expected one of avg, max, flatten; got 'average'"),
        ("model: {bn: Frozen}", "model.bn: expected one of auto, frozen, train; got 'Frozen' (did you mean frozen?)"),
        ("model: {weights: null}", "model.weights: expected a string, got None"),
        ("model: {head: {units: 8}}", "model.head: expected a list, got {'units': 8}"),
        ("model: {head: [{units: 0}]}", "model.head.0.units: must be >= 1, got 0"),
        ("data: 5", "data: expected a mapping of keys, got 5"),
        ("train: {phases: [{trainable: 5}]}", "train.phases.0.trainable: expected str or a list or a mapping, got 5"),
        ("train: {phases: [{lr_multipliers: {conv5: x}}]}", "train.phases.0.lr_multipliers.conv5: expected a number, got 'x'"),
        ("train: {jit_compile: maybe}", "train.jit_compile: expected bool or auto, got 'maybe'"),
        ("seed: 1.0e+400", "seed: expected an integer, got inf"),
        ("seed: " + "9" * 200, "seed: must be <= 2147483647, got 9999999999"),
    ],
)
def test_type_and_range_errors_name_key_and_value(tmp_path, text, expected):
    msg = error_of(load_text, tmp_path, text + "\n")
    assert msg.startswith(str(tmp_path / "x.yaml") + ": ")
    assert expected in msg, msg


def test_off_and_exponent_floats_read_as_meant(tmp_path):
    r = load_text(tmp_path, "model: {weights: none}\ntrain:\n  feature_cache: off\n  phases: [{lr: 1e-4, weight_decay: 5E-5}]\n")
    assert r.train.feature_cache == "off"
    assert r.train.phases[0].lr == pytest.approx(1e-4) and r.train.phases[0].weight_decay == pytest.approx(5e-5)


def test_yaml11_number_surprises_are_loud(tmp_path):
    assert "data.split_seed: expected an integer, got '0123'" in error_of(load_text, tmp_path, "data: {split_seed: 0123}\n")
    assert "data.batch_size: expected an integer, got '1:30'" in error_of(load_text, tmp_path, "data: {batch_size: 1:30}\n")
    r = load_text(tmp_path, "name: '1:30'\nmodel: {weights: none}\ndata: {split_seed: 0, batch_size: +8, augment: {noise: .5}}\n")
    assert (r.name, r.data.split_seed, r.data.batch_size, r.data.augment.noise) == ("1:30", 0, 8, 0.5)


def test_dates_stay_strings_and_duplicate_keys_fail(tmp_path):
    assert load_text(tmp_path, "name: 2024-01-01\nmodel: {weights: none}\n").name == "2024-01-01"
    assert "duplicate key 'seed'" in error_of(load_text, tmp_path, "seed: 1\nseed: 2\n")


# ------------------------------------------------------------------------- extends


def test_extends_relative_multilevel_deep_merge(tmp_path):
    write(tmp_path / "base" / "root.yaml", """\
        name: root
        data: {batch_size: 16, augment: {flip: false, rot90: false}, image_size: [48, 48]}
        model: {weights: none, head: [{units: 64}, {units: 32}]}
        train: {phases: [{trainable: head, epochs: 2}, {trainable: all, lr: 0.0001}]}
    """)
    write(tmp_path / "base" / "mid.yaml", """\
        extends: root.yaml
        data: {augment: {flip: true}}
        model: {head: [{units: 8}]}
    """)
    leaf = write(tmp_path / "exp" / "leaf.yaml", """\
        extends: ../base/mid.yaml
        name: leaf
        train: {phases: [{trainable: [conv5, head]}]}
    """)
    r = R.load(leaf)
    assert r.name == "leaf"
    assert r.data.batch_size == 16 and r.data.image_size == (48, 48)
    assert r.data.augment.flip is True and r.data.augment.rot90 is False  # mappings merge
    assert [b.units for b in r.model.head] == [8]  # lists replace
    assert len(r.train.phases) == 1 and r.train.phases[0].trainable == ("conv5", "head")
    assert r.train.phases[0].epochs == 1  # the replaced list does not inherit the old phase 0


def test_extends_cycle_and_self(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    msg = error_of(R.load, str(tmp_path / "a.yaml"))
    assert "extends cycle: a.yaml -> b.yaml -> a.yaml" in msg
    write(tmp_path / "self.yaml", "extends: self.yaml\nseed: 1\n")
    assert "extends cycle: self.yaml -> self.yaml" in error_of(R.load, str(tmp_path / "self.yaml"))


def test_extends_missing_file_names_both_files(tmp_path):
    path = write(tmp_path / "child.yaml", "extends: nowhere/base.yaml\n")
    msg = error_of(R.load, path)
    assert msg.startswith(f"{path}: extends: nowhere/base.yaml: recipe file not found")
    assert str(tmp_path / "nowhere" / "base.yaml") in msg


@pytest.mark.parametrize("value", ["[a.yaml]", "''", "3"])
def test_extends_must_be_a_path(tmp_path, value):
    assert "extends: expected a path to another recipe" in error_of(load_text, tmp_path, f"extends: {value}\n")


# ----------------------------------------------------------------------- overrides


def test_overrides_from_the_cli_examples(tmp_path):
    path = write(tmp_path / "x.yaml", "model: {weights: imagenet}\ntrain: {phases: [{trainable: head}, {trainable: all}]}\n")
    r = R.load(path, ["model.weights=none", "train.phases.1.lr=1e-4", "data.image_size=[32,32]"])
    assert r.model.weights == "none"
    assert r.train.phases[1].lr == pytest.approx(1e-4) and r.train.phases[0].lr == pytest.approx(1e-3)
    assert r.data.image_size == (32, 32)


def test_override_values_are_yaml_scalars():
    r = build("data.augment.flip=false", "model.cut_after=conv4", "model.cut_after=null", "name='123'", "seed= 7")
    assert r.data.augment.flip is False and r.model.cut_after is None and r.name == "123" and r.seed == 7


def test_override_unknown_key_names_file_key_and_hint(tmp_path):
    path = write(tmp_path / "x.yaml", "model: {weights: none}\n")
    assert error_of(R.load, path, ["data.bach_size=8"]) == f"{path}: --set data.bach_size: unknown key data.bach_size (did you mean batch_size?)"
    assert "unknown key data.foo (valid keys: source, path," in error_of(R.load, path, ["data.foo.bar=1"])


def test_override_index_out_of_range(tmp_path):
    path = write(tmp_path / "x.yaml", "model: {weights: none}\n")
    msg = error_of(R.load, path, ["train.phases.1.lr=1e-4"])
    assert msg == f"{path}: --set train.phases.1.lr: index 1 out of range: train.phases has 1 entry; set the whole list instead"
    assert "model.head has 0 entries" in error_of(R.load, path, ["model.head.0.units=8"])
    assert "expected a list index" in error_of(R.load, path, ["train.phases.first.lr=1"])


@pytest.mark.parametrize("item", ["model.weights", "=none", "model..weights=none", "model.weights.x=1"])
def test_override_malformed(item):
    msg = error_of(R.apply_overrides, {}, [item])
    assert msg.startswith("--set ")


def test_override_union_and_any_fields():
    assert build("train.phases.0.trainable=[conv5,head]").train.phases[0].trainable == ("conv5", "head")
    assert build("train.phases.0.trainable.from=conv4").train.phases[0].trainable == {"from": "conv4"}
    assert build("train.phases.0.trainable={patterns: ['conv5_.*']}").train.phases[0].trainable == {"patterns": ("conv5_.*",)}
    r = build("train.phases=[{trainable: {patterns: [a, b]}}]", "train.phases.0.trainable.patterns.1=c")
    assert r.train.phases[0].trainable == {"patterns": ("a", "c")}
    # A mapping-valued field (validate refuses lr_multipliers; the override path still builds it).
    r = build("train.phases.0.lr_multipliers.conv5=2", "train.phases.0.lr_multipliers.head=10", validate=False)
    assert r.train.phases[0].lr_multipliers == {"conv5": 2.0, "head": 10.0}
    assert build("model.head=[{units: 128}]").model.head == (R.DenseBlock(units=128),)
    assert build("model.head=[{units: 128}]", "model.head.0.dropout=0.5").model.head[0].dropout == 0.5


def test_override_later_phase_and_unset_lists():
    r = build("train.phases=[{}, {}, {schedule: step, epochs: 9, step_epochs: [3]}]", "train.phases.2.step_epochs.0=5")
    assert r.train.phases[2].step_epochs == (5,)
    r = build("data.augment.random_resized_crop=[0.5, 1.0]", "data.augment.random_resized_crop.0=0.6")
    assert r.data.augment.random_resized_crop == (0.6, 1.0)
    assert "random_resized_crop has 0 entries" in error_of(build, "data.augment.random_resized_crop.0=0.6")


def test_override_section_merges_and_null_resets():
    raw = {"data": {"batch_size": 8, "image_size": [48, 48]}, "model": {"weights": "none"}}
    r = R.from_dict(R.apply_overrides(raw, ["data={batch_size: 4}"]))
    assert r.data.batch_size == 4 and r.data.image_size == (48, 48)
    assert R.from_dict(R.apply_overrides(raw, ["data=null"])).data == R.DataConfig()
    assert raw["data"]["batch_size"] == 8  # the input is not modified
    assert "data is 5, not a section" in error_of(R.apply_overrides, {"data": 5}, ["data.batch_size=4"])


def test_replace_applies_overrides_to_a_recipe():
    r = build()
    r2 = R.replace(r, ["train.phases.0.lr=0.5"])
    assert r2.train.phases[0].lr == 0.5 and r.train.phases[0].lr == pytest.approx(1e-3)


# ------------------------------------------------------------------------ validate


def test_valid_recipe_passes():
    r = build("model.weights=imagenet", "model.cut_after=conv4", "model.reinit=[conv4]",
              "train.phases=[{trainable: head}, {trainable: {from: conv3}, schedule: step, epochs: 4, step_epochs: [2, 3]}]")
    assert R.stage_list(r) == ("conv1", "conv2", "conv3", "conv4")


@pytest.mark.parametrize(
    "sets, key, fragment",
    [
        (["name=a/b"], "name", "without path separators"),
        (["name=''"], "name", "non-empty"),
        (["name='a\\tb'"], "name", "without path separators"),
        (["data.source=directory"], "data.path", "set data.path"),
        (["data.source=tfds"], "data.name", "set data.name"),
        (["data.image_size=[16,64]"], "data.image_size", "at least 32 px a side"),
        (["data.image_size=[64,5000]"], "data.image_size", "between 1 and 4096"),
        (["data.fraction=0.5", "data.per_class=10"], "data.fraction", "not both"),
        (["data.fraction=0"], "data.fraction", "must be > 0"),
        (["data.val_fraction=0.5", "data.test_fraction=0.5"], "data.val_fraction", "must be < 1"),
        (["data.augment.random_resized_crop=[0.9, 0.5]"], "data.augment.random_resized_crop", "0 < min <= max <= 1"),
        (["data.channels=4"], "data.channels", "synthetic uint8 images are RGB"),
        (["data.val_fraction=0"], "data.val_fraction", "no validation split"),
        (["model.backbone=resnet1O1"], "model.backbone", "unknown backbone 'resnet1O1' (did you mean resnet101?); valid: resnet50,"),
        (["model.cut_after=conv9"], "model.cut_after", "unknown stage 'conv9' for resnet101"),
        (["model.reinit=[conv6]"], "model.reinit.0", "unknown stage 'conv6'"),
        (["model.weights=imagenet", "model.cut_after=conv3", "model.reinit=[conv5]"], "model.reinit.0", "removed by model.cut_after"),
        (["model.weights=''"], "model.weights", "expected imagenet, none or a weights file path"),
        (["model.weights=imagnet"], "model.weights", "use imagenet"),
        (["model.weights=ImageNet"], "model.weights", "use imagenet"),
        (["model.weights=random"], "model.weights", "use none"),
        (["model.reinit=[conv5]"], "model.reinit", "changes nothing"),
        (["model.head=[{activation: rleu}]"], "model.head.0.activation", "(did you mean relu?)"),
        (["train.phases=[]"], "train.phases", "at least one phase"),
        (["train.phases.0.trainable=conv6"], "train.phases.0.trainable", "unknown stage 'conv6'"),
        (["train.phases.0.trainable=[conv5, hed]"], "train.phases.0.trainable.1", "(did you mean head?)"),
        (["train.phases.0.trainable=[]"], "train.phases.0.trainable", "empty list"),
        (["train.phases.0.trainable={from: head}"], "train.phases.0.trainable.from", "unknown stage 'head'"),
        (["model.cut_after=conv4", "train.phases.0.trainable={from: conv5}"], "train.phases.0.trainable.from", "unknown stage 'conv5'"),
        (["train.phases.0.trainable={patterns: ['conv5_(']}"], "train.phases.0.trainable.patterns", "invalid regular expression"),
        (["train.phases.0.trainable={patterns: []}"], "train.phases.0.trainable.patterns", "non-empty list"),
        (["train.phases.0.trainable={from: conv4, patterns: [x]}"], "train.phases.0.trainable", "expected {from: <stage>} or {patterns"),
        (["train.phases.0.lr_multipliers={conv5: 0.1}"], "train.phases.0.lr_multipliers", "not supported with Keras 3 optimizers"),
        # Refused before training, not after phase 0 has trained.
        (["train.phases=[{trainable: head}, {trainable: all, lr_multipliers: {conv5: 0.1}}]"], "train.phases.1.lr_multipliers",
         "use a separate phase"),
        (["train.jit_compile=true", "train.deterministic=true"], "train.jit_compile", "cannot be combined with train.deterministic"),
        (["data.val_fraction=0", "train.monitor=loss"], "data.val_fraction", "no validation split"),
        (["train.phases.0.schedule=step"], "train.phases.0.step_epochs", "needs step_epochs"),
        (["train.phases.0.schedule=step", "train.phases.0.epochs=10", "train.phases.0.step_epochs=[5, 3]"], "train.phases.0.step_epochs.1", "increasing"),
        (["train.phases.0.step_epochs=[20]", "train.phases.0.epochs=10"], "train.phases.0.step_epochs.0", "10 epochs"),
        (["train.phases.0.warmup_epochs=3"], "train.phases.0.warmup_epochs", "longer than the phase"),
        (["train.distribute=tpu", "train.precision=mixed_float16"], "train.precision", "mixed_bfloat16"),
        (["train.monitor='val accuracy'"], "train.monitor", "metric name"),
    ],
)
def test_validate_cross_field_rules(sets, key, fragment):
    msg = error_of(build, *sets)
    assert msg.startswith(f"r.yaml: {key}: "), msg
    assert fragment in msg, msg


def test_validate_reads_the_backbones_min_size(monkeypatch):
    import dataclasses

    from keras_tl import backbones

    name = build().model.backbone
    assert build("data.image_size=[64,64]").data.image_size == (64, 64)
    monkeypatch.setitem(backbones._REGISTRY, name, dataclasses.replace(backbones.get(name), min_size=75))
    msg = error_of(build, "data.image_size=[64,80]")
    assert msg.startswith("r.yaml: data.image_size: ") and "at least 75 px a side" in msg, msg


def test_validate_accepts_paths_and_tfds_val_split():
    assert build("model.weights=runs/a/export/backbone.weights.h5").model.weights.endswith(".h5")
    assert build("data.source=tfds", "data.name=eurosat/rgb", "data.val_split=test", "data.val_fraction=0").data.val_fraction == 0


# ---------------------------------------------------------------- dump round trip


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["train.phases.0.trainable=[conv4, conv5, head]"],
        ["train.phases.0.trainable={from: conv3}"],
        ["train.phases.0.trainable={patterns: ['conv5_.*', '^head']}"],
        ["train.phases=[{trainable: head, lr: 1e-5}, {trainable: all, lr: 3e-7, schedule: cosine, warmup_epochs: 0.5}]"],
        ["name='1e-4'", "description='off'", "data.cache='2024-01-01'", "train.feature_cache=off", "train.jit_compile=true"],
        ["description='naïve résumé ✓ 銀河'", "data.augment.random_resized_crop=[0.6, 1.0]", "model.head=[{units: 8, dropout: 0.25, batch_norm: true}]"],
    ],
)
def test_dump_loads_round_trip(sets):
    r = build(*sets)
    text = R.dump(r)
    again = R.loads(text)
    assert again == r
    assert hash(again) == hash(r)
    assert R.dump(again) == text


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "recipes", "*.yaml"))))
def test_repo_recipes_load_and_round_trip(path):
    raw = R.load_raw(path)
    raw.pop("study", None)  # study recipes: the base recipe is checked here, the study section in test_study_plan
    r = R.from_dict(R.apply_overrides(raw, ["model.weights=none"]), path)
    assert R.loads(R.dump(r)) == r


def test_recipe_is_frozen_hashable_and_picklable():
    r = build("train.phases.0.trainable={patterns: [a]}", "train.phases.0.lr_multipliers={head: 2}", validate=False)
    with pytest.raises(TypeError):
        r.train.phases[0].lr_multipliers["head"] = 3
    with pytest.raises(TypeError):
        r.train.phases[0].trainable["patterns"] = ("b",)
    assert pickle.loads(pickle.dumps(r)) == r and copy.deepcopy(r) == r
    assert {r: 1}[build("train.phases.0.trainable={patterns: [a]}", "train.phases.0.lr_multipliers={head: 2}", validate=False)] == 1


def test_recipe_error_is_user_error_and_one_line():
    err = R.RecipeError("x.yaml: a\nb: unknown key \x1b[31m\u2028")
    assert isinstance(err, UserError)
    assert str(err) == "x.yaml: a\\nb: unknown key \\x1b[31m\\u2028"


def test_load_accepts_pathlike(tmp_path):
    assert R.load(tmp_path.joinpath(os.path.basename(write(tmp_path / "p.yaml", "model: {weights: none}\n")))).model.weights == "none"


# ----------------------------------------------------------------------------- CLI


def run_cli(recipe_path, *sets, workdir, probe_tf=False):
    """Run the training CLI in a subprocess; with probe_tf, also report whether TF was imported."""
    argv = ["--recipe", str(recipe_path), "--workdir", str(workdir)]
    for s in sets:
        argv += ["--set", s]
    if probe_tf:
        code = (
            "import atexit, runpy, sys\n"
            "probe = sys.argv.pop()\n"  # the CLI's own arguments stay as they are
            "atexit.register(lambda: open(probe, 'w').write(str('tensorflow' in sys.modules)))\n"
            "sys.argv = ['keras_tl.train'] + sys.argv[1:]\n"
            "runpy.run_module('keras_tl.train', run_name='__main__')\n"
        )
        cmd = [sys.executable, "-c", code, *argv, str(workdir) + ".tf"]
    else:
        cmd = [sys.executable, "-m", "keras_tl.train", *argv]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)


@pytest.fixture
def cli():
    return run_cli


@pytest.mark.parametrize(
    "text, sets, expected",
    [
        ("data:\n  bach_size: 8\n", (), "data.bach_size: unknown key (did you mean batch_size?)"),
        ("model: {weights: none}\n", ("train.phases.1.lr=1e-4",), "index 1 out of range"),
        ("model: {weights: none, backbone: resnet9}\n", (), "model.backbone: unknown backbone 'resnet9'"),
    ],
)
def test_cli_bad_recipe_exits_2_with_one_line(cli, tmp_path, text, sets, expected):
    path = write(tmp_path / "bad.yaml", text)
    wd = tmp_path / "wd"
    proc = cli(path, *sets, workdir=wd)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0] and path in lines[0]
    assert not wd.exists()


def test_cli_fails_before_importing_tensorflow(cli, tmp_path):
    path = write(tmp_path / "bad.yaml", "data: {batch_size: -1}\n")
    wd = tmp_path / "wd"
    proc = cli(path, workdir=wd, probe_tf=True)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    with open(str(wd) + ".tf") as f:
        assert f.read() == "False"
    assert not wd.exists()
