"""What every keras_tl command shares: quiet output, one error line, one line on Ctrl-C.

train, study, probe, visualize, predict and weights call :func:`setup_output` first (before
TensorFlow is imported) and run their body through :func:`run`:

- bad input: a :class:`~keras_tl.errors.UserError` raised anywhere below becomes one line
  ``error: <message>`` on stderr (newlines and runs of spaces folded) and exit status 2;
- Ctrl-C: one line ``interrupted; resume with: <command>`` (the command the running code
  registered with :func:`set_resume_command`) and exit status 130, no traceback;
- quiet by default: TensorFlow's C++ start-up lines (oneDNN, cuda stubs, cuInit on a CPU
  machine, cpu_feature_guard) and its INFO/WARNING Python logging are hidden.
  ``KERAS_TL_VERBOSE=1`` leaves TensorFlow's logging as TensorFlow sets it.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import logging
import os
import re
import shlex
import sys
import tempfile
import warnings
from typing import Callable, Optional, Sequence, Union

from keras_tl.errors import UserError

USAGE_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

VERBOSE_ENV = "KERAS_TL_VERBOSE"

# Lines TensorFlow writes to fd 2 while it is imported, before its log level applies (absl C++
# logging before absl::InitializeLog, tensorflow/tensorflow#100442): dropped unless verbose.
_IMPORT_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} \d\d:\d\d:\d\d|"
    r"To enable the following instructions:|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] )"
)

_resume_command: Union[None, str, Callable[[], str]] = None


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def setup_output() -> None:
    """Quiet TensorFlow and Keras for a command (a no-op under ``KERAS_TL_VERBOSE=1``).

    Sets the environment before TensorFlow is imported (child processes inherit it) and installs
    an import hook that drops TensorFlow's C++ start-up lines; call it before anything imports
    TensorFlow.
    """
    if verbose():
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # C++ INFO/WARNING/ERROR lines (cuInit on a CPU machine)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # signature_serialization, Sharding callback
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover - absl comes with TensorFlow
        pass
    warnings.filterwarnings("ignore", message=r".*shuffle=True. was passed, but will be ignored")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


class _QuietImport(importlib.abc.MetaPathFinder):
    """On the first ``import tensorflow``: fd 2 goes to a temp file while it runs, then the lines
    that are not start-up noise are written back to stderr."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                self.inner.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                        if not _IMPORT_NOISE.match(line)]
                if kept:
                    sys.stderr.write("".join(kept))
                    sys.stderr.flush()


def recipe_parser(module: str, doc: str, *, recipe: str, overrides: str, workdir: str) -> argparse.ArgumentParser:
    """The argument parser every recipe-driven command starts from: --recipe, --set (repeatable), --workdir."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0],
                                epilog="Quiet by default; KERAS_TL_VERBOSE=1 shows TensorFlow's own log lines.")
    p.add_argument("--recipe", help=recipe)
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="K=V", help=overrides)
    p.add_argument("--workdir", help=workdir)
    return p


def command_line(module: str, args: Sequence[str]) -> str:
    """``python -m <module> <args>``, quoted for a POSIX shell."""
    return " ".join(["python", "-m", module, *(shlex.quote(str(a)) for a in args)])


def set_resume_command(command: Union[None, str, Callable[[], str]]) -> None:
    """The command printed if the user presses Ctrl-C from now on (None: just "interrupted"); a
    callable is asked at Ctrl-C time (the shortest equivalent command may change as the run goes)."""
    global _resume_command
    _resume_command = command


def error_line(message) -> str:
    return "error: " + " ".join(str(message).split())


def print_error(message) -> None:
    print(error_line(message), file=sys.stderr, flush=True)


def run(fn, *args, **kwargs) -> int:
    """``fn(*args, **kwargs)`` as a command: its exit status (0 when it returns None), 2 after
    printing the error line when it raises UserError, 130 after one line on Ctrl-C."""
    try:
        status = fn(*args, **kwargs)
    except UserError as e:
        print_error(e)
        return USAGE_ERROR
    except KeyboardInterrupt:
        command = _resume_command() if callable(_resume_command) else _resume_command
        how = f"; resume with: {command}" if command else ""
        print(f"\ninterrupted{how}", file=sys.stderr, flush=True)
        return INTERRUPTED
    return 0 if status is None else int(status)
