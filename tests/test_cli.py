"""One error path for every command: bad input is one ``error: ...`` line on stderr and exit status 2."""

import os
import signal
import pathlib
import subprocess
import sys

import pytest

import keras_tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("argv, needle", [
    (["keras_tl.train"], "--recipe is required"),
    (["keras_tl.study"], "--recipe is required"),
    (["keras_tl.probe"], "--recipe is required"),
    (["keras_tl.visualize", "--model", "missing.keras", "x.png"], "--model missing.keras: not found"),
    (["keras_tl.predict", "--model", "no_such_export", "x.png"], "no_such_export: not a complete keras_tl export"),
    (["keras_tl.ask", "--data", "no_such_folder"], "no_such_folder"),
])
def test_every_command_reports_bad_input_in_one_line(tmp_path, argv, needle):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    # Quiet by default (keras_tl.cli.setup_output): keras_tl's one line is all of stderr, even
    # where TensorFlow was imported (predict, visualize).
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("error: ") and needle in proc.stderr, proc.stderr


NOISE = ("absl::InitializeLog", "cuInit", "oneDNN", "cpu_feature_guard", "cudart_stub", "shuffle=True",
         "signature_serialization", "Sharding callback")


def test_tensorflow_start_up_is_quiet_unless_verbose(tmp_path):
    """TensorFlow's start-up lines are hidden by default and come back with KERAS_TL_VERBOSE=1."""
    code = "from keras_tl import cli; cli.setup_output(); import tensorflow as tf; tf.constant(1) + 1; print('ok')"
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0"))
    assert quiet.returncode == 0 and quiet.stdout.strip() == "ok", quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if any(n in line for n in NOISE)], quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", KERAS_TL_VERBOSE="1"))
    assert loud.returncode == 0 and any(n in loud.stderr for n in NOISE), loud.stderr


@pytest.mark.parametrize("module, own_flags", [
    ("keras_tl.train", ["--recipe", "--set", "--workdir", "runs/<recipe name>/<timestamp>"]),
    ("keras_tl.study", ["--recipe", "--set", "--workdir", "runs/studies/<recipe name>", "--resume", "--shard"]),
    ("keras_tl.probe", ["--recipe", "--weights", "--compare"]),
    ("keras_tl.visualize", ["--model", "--out", "--maps"]),
    ("keras_tl.predict", ["--model", "--top_k", "--batch_size"]),
    ("keras_tl.weights", ["fetch", "list"]),
    ("keras_tl.ask", ["--data", "--budget", "--backbone", "--source", "--dry_run", "--set"]),
])
def test_every_command_help_lists_its_own_flags_and_exits_0(tmp_path, module, own_flags):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for flag in own_flags:
        assert flag in text, (module, flag, proc.stdout)
    assert "--tpu" not in text or module == "keras_tl.train", proc.stdout  # no flags borrowed from another command


def test_every_entry_point_quiets_tensorflow_first():
    """Each ``main`` calls cli.setup_output() before anything can import TensorFlow (ask once did not,
    and printed cuInit and oneDNN lines on a CPU machine)."""
    import ast

    package = pathlib.Path(keras_tl.__file__).parent
    mains = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name == "main":
                mains.append(path.name)
                calls = [n for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
                assert any(c.func.attr == "setup_output" for c in calls), f"{path}: main() must call cli.setup_output()"
    assert {"train.py", "ask.py", "probe.py", "predict.py", "visualize.py", "weights.py"} <= set(mains), mains


def test_only_cli_py_prints_error_lines():
    """No command formats its own error line or exit status (they drifted apart before: four variants)."""
    package = pathlib.Path(keras_tl.__file__).parent
    for path in package.rglob("*.py"):
        if path.name == "cli.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert 'print(f"error' not in text and "sys.exit(2)" not in text, path


def test_ctrl_c_prints_one_line_with_the_command_that_resumes(tmp_path, tiny, recipe_file):
    """Ctrl-C (SIGINT at the end of phase 1) prints one line naming the exact resume command, exit 130,
    no traceback; that command resumes the run and finishes it."""
    raw = tiny()
    raw["train"]["phases"] = [{"name": "head", "trainable": "head", "epochs": 1, "lr": 3e-3},
                              {"name": "ft", "trainable": "all", "epochs": 1, "lr": 1e-4}]
    raw["export"] = {"savedmodel": False}
    recipe = recipe_file(tmp_path, raw)
    env = dict(os.environ, KERAS_TL_FAULT="sigint@phase_recorded:0")
    cmd = [sys.executable, "-m", "keras_tl.train", "--recipe", recipe, "--set", "seed=4"]
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps an
    # ignored SIGINT; restore the default so the child behaves as in a terminal however CI runs us.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    prefix = "interrupted; resume with: python -m keras_tl.train "
    assert lines[0].startswith(prefix) and "--set seed=4" in lines[0] and "--workdir runs/tiny/" in lines[0], lines[0]
    import shlex

    env.pop("KERAS_TL_FAULT")
    again = subprocess.run([sys.executable, "-m", "keras_tl.train", *shlex.split(lines[0][len(prefix):])],
                           capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stdout and "phase 1/2 already done" in again.stdout, again.stdout


def test_tensorflow_op_errors_lose_their_graph_internals():
    from keras_tl import predict

    raw = ("{{function_node __wrapped__DecodeImage_device_/job:localhost/replica:0/task:0/device:CPU:0}} Unknown image "
           "file format. One of JPEG, PNG, GIF, BMP required. [Op:DecodeImage] name: ")
    assert predict.clean_tf_message(raw) == "Unknown image file format. One of JPEG, PNG, GIF, BMP required."
