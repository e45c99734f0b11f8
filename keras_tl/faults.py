"""Deterministic crash points for the interruption tests.

``KERAS_TL_FAULT=<point>`` makes the process SIGKILL itself when it reaches ``point``
(for example ``phase_end:0`` or ``export:before_rename``), so tests can kill a run at an
exact moment instead of racing a timer; ``KERAS_TL_FAULT=sigint@<point>`` sends SIGINT instead
(what Ctrl-C does). Unset (always, outside tests) it does nothing.
"""

import os
import signal


def point(name: str) -> None:
    """Die here, without cleanup, if the environment asks for it."""
    fault = os.environ.get("KERAS_TL_FAULT")
    if fault == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == f"sigint@{name}":
        os.kill(os.getpid(), signal.SIGINT)
