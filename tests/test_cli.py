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
    ("keras_tl.train", ["--recipe", "--set", "--workdir", "runs/<recipe name>/<timestamp>", "--resume"]),
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


def _plant_run(directory, recipe_path, overrides, done: bool) -> str:
    """A run directory as train leaves it (recipe.yaml, DONE if ``done``), without training; its path."""
    from keras_tl import recipe as recipe_lib

    directory.mkdir(parents=True)
    (directory / "recipe.yaml").write_text(recipe_lib.dump(recipe_lib.load(recipe_path, overrides)))
    if done:
        (directory / "DONE").write_text("planted\n")
    return str(directory)


def test_ctrl_c_prints_one_line_with_the_command_that_resumes(tmp_path, tiny, recipe_file):
    """Ctrl-C (SIGINT at the end of phase 1) prints one line naming the exact resume command, exit 130,
    no traceback; that command (train --resume, the run being the newest unfinished one of its
    recipe) resumes the run and finishes it, passing over a newer finished run of the same recipe
    and a newer unfinished run with another --set value."""
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
    assert lines[0] == f"{prefix}--recipe {recipe} --set seed=4 --resume", lines[0]
    (run_dir,) = [p for p in (tmp_path / "runs" / "tiny").iterdir()]
    finished = _plant_run(tmp_path / "runs" / "tiny" / "99990101-000000", recipe, ["seed=4"], done=True)
    other_set = _plant_run(tmp_path / "runs" / "tiny" / "99990101-000001", recipe, ["seed=5"], done=False)
    import shlex

    env.pop("KERAS_TL_FAULT")
    again = subprocess.run([sys.executable, "-m", "keras_tl.train", *shlex.split(lines[0][len(prefix):])],
                           capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming the unfinished run in runs/tiny/{run_dir.name}" in again.stdout, again.stdout
    assert "phase 1/2 already done" in again.stdout and (run_dir / "DONE").exists(), again.stdout
    assert not (run_dir / ".lock").exists()  # the run lock goes with the finished run
    assert sorted(os.listdir(finished)) == ["DONE", "recipe.yaml"] and os.listdir(other_set) == ["recipe.yaml"]


def test_train_resume_refuses_when_nothing_matches_and_with_workdir(tmp_path, tiny, recipe_file):
    """--resume with no unfinished run of the recipe (one finished, one with another --set) and
    --resume with --workdir: one line each, exit status 2, nothing written."""
    recipe = recipe_file(tmp_path, tiny())
    _plant_run(tmp_path / "runs" / "tiny" / "20260101-000000", recipe, [], done=True)
    _plant_run(tmp_path / "runs" / "tiny" / "20260101-000001", recipe, ["seed=5"], done=False)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for extra, needle in (([], "--resume: no unfinished run of this recipe under runs/tiny (1 finished and 1 unfinished "
                                "of a different recipe or --set values); start a new run by leaving out --resume"),
                          (["--workdir", "runs/tiny/20260101-000001"], "--resume and --workdir: give one")):
        proc = subprocess.run([sys.executable, "-m", "keras_tl.train", "--recipe", recipe, "--resume", *extra],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {needle}"), proc.stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_latest_unfinished_is_the_newest_started_run_of_the_same_recipe(tmp_path, tiny, recipe_file, monkeypatch):
    from keras_tl import checkpoint
    from keras_tl import recipe as recipe_lib

    recipe = recipe_file(tmp_path, tiny())
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs" / "tiny"
    old = _plant_run(runs / "b-started-first", recipe, ["seed=5"], done=False)
    new = _plant_run(runs / "a-started-later", recipe, ["seed=5"], done=False)
    _plant_run(runs / "c-newest-but-done", recipe, ["seed=5"], done=True)
    os.utime(os.path.join(old, "recipe.yaml"), (1_000_000, 1_000_000))
    os.utime(os.path.join(new, "recipe.yaml"), (2_000_000, 2_000_000))
    assert checkpoint.latest_unfinished(recipe_lib.load(recipe, ["seed=5"])) == os.path.join("runs", "tiny", "a-started-later")
    # A value set to its default is the same recipe (recipe.same_recipe), not a different --set.
    assert checkpoint.latest_unfinished(recipe_lib.load(recipe, ["seed=5", "train.keep_checkpoints=false"])).endswith("a-started-later")


def test_a_run_directory_another_process_trains_in_is_refused_and_skipped(tmp_path, tiny, recipe_file, monkeypatch):
    """While another process holds a run directory's lock: training there is refused in one line
    naming the holder, --resume passes it over, and once the holder is gone the lock is free."""
    from keras_tl import checkpoint
    from keras_tl import recipe as recipe_lib
    from keras_tl.errors import WorkdirError

    recipe = recipe_file(tmp_path, tiny())
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs" / "tiny"
    busy = _plant_run(runs / "b-busy", recipe, [], done=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
         "f.write('pid 4242 on telescope-7, since 2026-12-01 23:59:00'); f.flush(); print('held', flush=True); sys.stdin.read()",
         os.path.join(busy, ".lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        loaded = recipe_lib.load(recipe, [])
        # Taken after the pre-flight, on the chief only: multi-worker workers share the directory.
        with pytest.raises(WorkdirError, match=r"b-busy: a run is already training in this directory \(pid 4242 on telescope-7"):
            checkpoint.RunLock(busy).acquire()
        with pytest.raises(WorkdirError, match=r"\(1 training now in another process\)"):
            checkpoint.latest_unfinished(loaded)
        idle = _plant_run(runs / "a-idle", recipe, [], done=False)
        os.utime(os.path.join(idle, "recipe.yaml"), (1_000_000, 1_000_000))  # older than the busy one
        assert checkpoint.latest_unfinished(loaded) == os.path.join("runs", "tiny", "a-idle")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert checkpoint.holder(busy) is None
    assert checkpoint.latest_unfinished(loaded) == os.path.join("runs", "tiny", "b-busy")
    lock = checkpoint.RunLock(busy).acquire()
    assert checkpoint.holder(busy) is None  # this process's own lock does not hide the run from it
    lock.release(remove=True)
    assert not os.path.exists(os.path.join(busy, ".lock"))


def test_tensorflow_op_errors_lose_their_graph_internals():
    from keras_tl import predict

    raw = ("{{function_node __wrapped__DecodeImage_device_/job:localhost/replica:0/task:0/device:CPU:0}} Unknown image "
           "file format. One of JPEG, PNG, GIF, BMP required. [Op:DecodeImage] name: ")
    assert predict.clean_tf_message(raw) == "Unknown image file format. One of JPEG, PNG, GIF, BMP required."
