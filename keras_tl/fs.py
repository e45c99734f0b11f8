"""Files on local disk or on ``gs://`` (through ``tf.io.gfile``): one set of helpers for every module.

A path holding ``://`` is remote; TensorFlow is imported only for those, so local use stays
TensorFlow-free. Writes are atomic (temp file, then rename): a kill never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import uuid
from typing import Any, Dict


def is_remote(path: str) -> bool:
    return "://" in path


def gfile():
    import tensorflow as tf

    return tf.io.gfile


def exists(path: str) -> bool:
    return gfile().exists(path) if is_remote(path) else os.path.exists(path)


def makedirs(path: str) -> None:
    gfile().makedirs(path) if is_remote(path) else os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    """Delete a file; a missing one is not an error."""
    try:
        gfile().remove(path) if is_remote(path) else os.remove(path)
    except FileNotFoundError:
        pass
    except Exception:  # noqa: BLE001 - gfile raises its own NotFoundError
        if exists(path):
            raise


def replace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``, replacing it (atomic on a local disk)."""
    gfile().rename(src, dst, overwrite=True) if is_remote(dst) else os.replace(src, dst)


def read_text(path: str) -> str:
    if is_remote(path):
        with gfile().GFile(path, "r") as f:
            return f.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Write atomically (temp file + rename) so a kill never leaves half a file."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    if is_remote(path):
        with gfile().GFile(tmp, "wb") as f:
            f.write(data)
        replace(tmp, path)
        return
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    """Write atomically (temp file + rename), UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_json(path: str, obj: Any) -> None:
    """``obj`` as indented JSON (NumPy scalars and arrays as numbers and lists), atomically."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def create_exclusive(path: str, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists. True if this call created it.

    Local: ``O_CREAT | O_EXCL``, so of several processes exactly one succeeds. gs:// has no
    exclusive create through gfile: check, then write (best effort).
    """
    if is_remote(path):
        if gfile().exists(path):
            return False
        with gfile().GFile(path, "w") as f:
            f.write(text)
        return True
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return True


def age_seconds(path: str) -> float:
    """Seconds since ``path`` was last modified; 0 when it cannot be read."""
    try:
        mtime = gfile().stat(path).mtime_nsec / 1e9 if is_remote(path) else os.path.getmtime(path)
    except Exception:  # noqa: BLE001 - OSError, or gfile's own NotFoundError
        return 0.0
    return time.time() - mtime


def sha256_file(path: str) -> str:
    """Hex sha256 of a local file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> Dict[str, str]:
    """The library versions a run or an export records."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_tl

    return {"keras_tl": keras_tl.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": platform.python_version()}
