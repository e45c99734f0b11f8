"""Safety: no code execution from user files, writes confined to the workdir, weights checked
before use, and an unusable workdir refused before training.

The source scans read keras_tl/ with ``ast`` (not grep), so comments and strings cannot hide
or fake a call.
"""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

import keras_tl
from keras_tl import recipe as recipe_lib
from keras_tl.errors import WorkdirError

PACKAGE = pathlib.Path(keras_tl.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))

@pytest.fixture
def small(tiny):
    """tests/conftest.py's tiny recipe cut to one head-only epoch on 60 images: these tests are
    about files and refusals, not training."""
    raw = tiny()
    raw["seed"] = 1
    raw["data"]["synthetic"] = {"count": 60, "seed": 7}
    del raw["model"]["head"]
    raw["train"] = {"tensorboard": False, "phases": [{"name": "head", "trainable": "head", "epochs": 1}]}
    return raw


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
            yield node, owner, name


def _kw(call, key):
    return next((k.value for k in call.keywords if k.arg == key), None)


def _parsed():
    assert len(SOURCES) > 20
    return [(p.relative_to(PACKAGE.parent), ast.parse(p.read_text(encoding="utf-8"))) for p in SOURCES]


def test_every_yaml_load_uses_a_safe_loader():
    import yaml as yaml_mod

    loads = 0
    for path, tree in _parsed():
        module = None
        for call, owner, name in _calls(tree):
            if owner != "yaml":
                continue
            assert name not in ("unsafe_load", "unsafe_load_all", "full_load", "full_load_all"), f"{path}:{call.lineno}: yaml.{name}"
            if name in ("load", "load_all"):
                loader = _kw(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
                assert isinstance(loader, (ast.Name, ast.Attribute)), f"{path}:{call.lineno}: yaml.{name} without an explicit Loader"
                if isinstance(loader, ast.Attribute):
                    cls = getattr(yaml_mod, loader.attr)
                else:
                    import importlib

                    module = module or importlib.import_module(".".join(path.with_suffix("").parts))
                    cls = getattr(module, loader.id)
                assert issubclass(cls, yaml_mod.SafeLoader), f"{path}:{call.lineno}: {cls} is not a SafeLoader"
                loads += 1
            elif name in ("safe_load", "safe_load_all"):
                loads += 1
    assert loads >= 1  # recipe.py reads every YAML file and --set value, study sections included


def test_every_keras_model_load_is_in_safe_mode():
    found = 0
    for path, tree in _parsed():
        for call, owner, name in _calls(tree):
            if name == "load_model":
                mode = _kw(call, "safe_mode")
                assert isinstance(mode, ast.Constant) and mode.value is True, f"{path}:{call.lineno}: load_model without safe_mode=True"
                found += 1
    assert found >= 2  # export verification, file weights (.keras)


# The one reviewed exception to "no pickle": torch checkpoints are pickles, and reading the
# EfficientNet-Lite0 ImageNet checkpoint needs an unpickler. That module may import pickle only to
# subclass pickle.Unpickler with a find_class allow-list (checked below and by
# tests/test_efficientnet_lite.py's refusal test); it may not call pickle.load/loads itself.
RESTRICTED_UNPICKLER = pathlib.Path("keras_tl/torch_checkpoint.py")


def test_the_restricted_unpickler_only_subclasses_unpickler():
    tree = dict(_parsed())[RESTRICTED_UNPICKLER]
    uses = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "pickle"}
    assert uses == {"Unpickler"}, uses
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and any(ast.unparse(b) == "pickle.Unpickler" for b in n.bases)]
    assert len(classes) == 1 and "find_class" in {f.name for f in classes[0].body if isinstance(f, ast.FunctionDef)}


def test_no_eval_exec_pickle_or_shell():
    banned_modules = {"pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}
    for path, tree in _parsed():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
                if path == RESTRICTED_UNPICKLER:
                    names -= {"pickle"}
                assert not names & banned_modules, f"{path}:{node.lineno}"
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in banned_modules, f"{path}:{node.lineno}"
        for call, owner, name in _calls(tree):
            where = f"{path}:{call.lineno}"
            if owner is None:
                assert name not in ("eval", "exec", "compile", "__import__"), where
            assert (owner, name) != ("os", "system") and (owner, name) != ("os", "popen"), where
            shell = _kw(call, "shell")
            assert not (isinstance(shell, ast.Constant) and shell.value), f"{where}: shell=True"
            if name == "load" and owner in ("np", "numpy"):
                pickle_kw = _kw(call, "allow_pickle")
                assert isinstance(pickle_kw, ast.Constant) and pickle_kw.value is False, f"{where}: np.load needs allow_pickle=False"
        # enable_unsafe_deserialization would switch safe mode off for the whole process.
        assert "enable_unsafe_deserialization" not in {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}, path


def test_phase_names_cannot_escape_the_run_dir(small):
    """Phase names become file names (log_<i>_<name>.csv, tensorboard/<name>)."""
    for bad in ["../../outside", "a/b", "..", "a\\b", "x\ny"]:
        raw = {**small, "train": {**small["train"], "phases": [{"name": bad, "trainable": "head"}]}}
        with pytest.raises(recipe_lib.RecipeError, match=r"train\.phases\.0\.name"):
            recipe_lib.from_dict(raw)
    raw = {**small, "train": {**small["train"], "phases": [{"name": "warm-up phase é", "trainable": "head"}]}}
    recipe_lib.from_dict(raw)


def _cli(args, *, cwd=None, env_extra=None, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERAS_TL_FAULT", None)
    env.update(env_extra or {})
    for k in [k for k, v in env.items() if v is None]:
        env.pop(k)
    return subprocess.run([sys.executable, "-m", "keras_tl.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _error_line(stderr):
    """keras_tl's one error line (TensorFlow's C++ start-up lines may precede it)."""
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: ")
    assert not [l for l in lines[:-1] if l.startswith("error") or "Traceback" in l], lines
    return lines[-1]


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in pathlib.Path(root).rglob("*"))


# What Keras and matplotlib document writing on first use, outside any run directory:
# ~/.keras/keras.json (Keras config, created at import), ~/.cache/matplotlib (font cache) and
# ~/.config/matplotlib (matplotlib's config dir, created empty).
ALLOWED_OUTSIDE = {".keras", ".keras/keras.json", ".cache", ".cache/matplotlib", ".config", ".config/matplotlib"}


def test_a_training_run_writes_only_under_its_workdir(tmp_path, small, recipe_file):
    home, cwd, tmp, wd = (tmp_path / n for n in ("home", "cwd", "tmp", "wd"))
    for d in (home, cwd, tmp):
        d.mkdir()
    recipe = recipe_file(tmp_path, small)
    before = set(_tree(tmp_path))
    out = _cli(["--recipe", recipe, "--workdir", str(wd)], cwd=cwd,
               env_extra={"HOME": str(home), "TMPDIR": str(tmp), "KERAS_HOME": None, "MPLCONFIGDIR": None,
                          "XDG_CACHE_HOME": None, "XDG_CONFIG_HOME": None, "TFDS_DATA_DIR": None})
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.exists(wd / "DONE")
    assert _tree(cwd) == [] and _tree(tmp) == []
    outside_home = [n for n in _tree(home) if n not in ALLOWED_OUTSIDE and not n.startswith(".cache/matplotlib/fontlist")]
    assert outside_home == []
    new = {n for n in set(_tree(tmp_path)) - before if not n.startswith(("wd", "home"))}
    assert new == set()


def test_wrong_shape_weights_file_exits_2_naming_the_layer_before_training(tmp_path, small, recipe_file):
    import keras

    from keras_tl import model as model_lib
    from keras_tl import weights as weights_lib

    # Weights keras_tl saved from a 1-band model, offered to a 3-channel one.
    one_band = {**small, "data": {**small["data"], "channels": 1, "synthetic": {"count": 60, "output": "float"}}}
    keras.utils.set_random_seed(0)
    m = model_lib.build_model(recipe_lib.from_dict(one_band), 10)
    wfile = tmp_path / "one_band.weights.h5"
    weights_lib.save_backbone_weights(m, str(wfile))
    wd = tmp_path / "wd"
    out = _cli(["--recipe", recipe_file(tmp_path, small), "--workdir", str(wd), "--set", f"model.weights={wfile}"])
    assert out.returncode == 2, out.stderr[-3000:]
    err = _error_line(out.stderr)
    assert "shape mismatch at layer conv" in err and str(wfile) in err
    assert not wd.exists()  # refused in the pre-flight: no checkpoint, no epoch


def _run_dir_error(workdir, raw):
    from keras_tl import checkpoint

    return checkpoint.prepare_workdir(workdir, recipe_lib.from_dict(raw))


def test_unwritable_workdir_is_refused(tmp_path, small):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(WorkdirError, match="a_file/wd: cannot write to the run directory"):
        _run_dir_error(str(blocker / "wd"), small)
    with pytest.raises(WorkdirError, match="cannot write to the run directory"):
        _run_dir_error("/proc/keras_tl_wd", small)


def test_too_little_disk_is_refused(tmp_path, monkeypatch, small):
    import shutil

    from keras_tl import checkpoint

    usage = shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage._replace(free=50 * 2**20))
    with pytest.raises(WorkdirError, match=r"only 50 MiB free.*at least 200 MiB"):
        _run_dir_error(str(tmp_path / "wd"), small)


def test_unwritable_workdir_through_the_cli_exits_2_in_one_line(tmp_path, small, recipe_file):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = _cli(["--recipe", recipe_file(tmp_path, small), "--workdir", str(blocker / "wd")], timeout=120)
    assert out.returncode == 2
    err = _error_line(out.stderr)
    assert "a_file/wd: cannot write to the run directory" in err and "choose a writable --workdir" in err
    assert not (tmp_path / "wd").exists()
