"""Deterministic crash points for the interruption tests.

``KERAS_TL_FAULT=<point>`` makes the process SIGKILL itself when it reaches ``point``
(for example ``phase_end:0`` or ``export:before_rename``), so tests can kill a run at an
exact moment instead of racing a timer. Unset (always, outside tests) it does nothing.
"""

import os
import signal


def point(name: str) -> None:
    """Die here, without cleanup, if the environment asks for it."""
    if os.environ.get("KERAS_TL_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
