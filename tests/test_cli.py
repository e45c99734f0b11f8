"""One error path for every command: bad input is one ``error: ...`` line on stderr and exit status 2."""

import os
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
])
def test_every_command_reports_bad_input_in_one_line(tmp_path, argv, needle):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    # TensorFlow's C++ start-up lines may come first; keras_tl's one line is the last.
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1], proc.stderr
    assert not [line for line in lines[:-1] if line.startswith("error") or "Traceback" in line], proc.stderr


def test_only_cli_py_prints_error_lines():
    """No command formats its own error line or exit status (they drifted apart before: four variants)."""
    package = pathlib.Path(keras_tl.__file__).parent
    for path in package.rglob("*.py"):
        if path.name == "cli.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert 'print(f"error' not in text and "sys.exit(2)" not in text, path
