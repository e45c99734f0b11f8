"""Fetch a keras.applications weights file into the Keras cache, verified, once.

:func:`ensure` returns the path and sha256 of ``<cache_dir>/<file name>`` after checking it
against the hash Keras publishes for it (md5 for 32 hex digits, sha256 for 64, the rule of
``keras.utils.get_file``). A missing or damaged file is downloaded:

- from ``$KERAS_TL_WEIGHTS_MIRROR/<file name>`` when that is set (https://, http://, file://,
  gs:// or a local directory), else from the origin keras.applications uses. A failing mirror
  is an error, never a reason to try the origin: a firewalled site set the mirror on purpose;
- under an exclusive lock on ``<cache_dir>/.<file name>.lock`` (``fcntl.flock``), so concurrent
  runs and study workers download it once: the others wait, then verify and use the file;
- into a temporary file in ``<cache_dir>``, hashed while it is written and renamed over the
  cache file only when the hash matches: nobody ever reads a half-written file, and a failed or
  mismatching download leaves nothing in the cache (only the empty lock file);
- with every wait bounded by ``$KERAS_TL_DOWNLOAD_TIMEOUT`` seconds (default 60): name lookup,
  connect, the answer, each read; and at least 64 KiB must arrive per timeout period, so a
  trickle ends within twice the timeout.

A verified file is remembered for the rest of the process by (path, inode, size, mtime), so a
run hashes a 170 MB file once (about 0.4 s) however often it asks.

A progress bar (tqdm) goes to stderr when stderr is a terminal; otherwise one line before and
one after each download.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import http.client
import math
import os
import queue
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, Optional, Tuple

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; concurrent downloads then race
    fcntl = None

from keras_tl.errors import UserError, WeightsError

MIRROR_ENV = "KERAS_TL_WEIGHTS_MIRROR"
TIMEOUT_ENV = "KERAS_TL_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
MIRROR_SCHEMES = ("https", "http", "file", "gs")
_GFILE_SCHEMES = ("gs",)  # read through tf.io.gfile
_CHUNK = 1 << 16
# Fewer bytes than this in a whole timeout period is a stalled download, even if every single
# read answered in time (a server trickling one byte every few seconds).
_MIN_BYTES_PER_PERIOD = 64 << 10


class DownloadError(WeightsError):
    """A weights file could not be fetched or verified; the message names the URL, the cache file and the fixes."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A file keras.applications downloads: its cache file name, origin URL and published hash."""

    name: str
    origin: str
    file_hash: str
    label: str = ""  # what it is, for messages: "resnet50 ImageNet weights"

    @property
    def algorithm(self) -> str:
        return "sha256" if len(self.file_hash) == 64 else "md5"


@dataclasses.dataclass(frozen=True)
class Cached:
    """A verified file in the cache."""

    path: str
    sha256: str
    downloaded_from: Optional[str] = None  # the URL, when this call downloaded it


# ------------------------------------------------------------------ configuration


def timeout_s() -> float:
    """``$KERAS_TL_DOWNLOAD_TIMEOUT`` in seconds (default 60)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0 (default {DEFAULT_TIMEOUT_S:g}); fix or unset it")
    return value


def mirror() -> Optional[str]:
    """``$KERAS_TL_WEIGHTS_MIRROR``, or None when unset or empty."""
    return os.environ.get(MIRROR_ENV, "").strip() or None


def source_url(remote: RemoteFile) -> str:
    """Where ``remote`` is fetched from: the mirror's copy (looked up by file name) or the Keras origin."""
    base = mirror()
    if base is None:
        return remote.origin
    scheme = urllib.parse.urlsplit(base).scheme.lower()
    if "://" in base:
        if scheme not in MIRROR_SCHEMES:
            raise UserError(f"{MIRROR_ENV}={base!r}: unsupported scheme {scheme}://; use https://, http://, file://, gs:// or a local directory")
        return base.rstrip("/") + "/" + urllib.parse.quote(remote.name)
    return os.path.join(os.path.abspath(os.path.expanduser(base)), remote.name)


# ---------------------------------------------------------------------- verifying


_VERIFIED: Dict[Tuple, str] = {}


def _identity(path: str, remote: RemoteFile) -> Tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, remote.file_hash)


def _hashers(remote: RemoteFile):
    """(the published hash's hasher, sha256): one pass over the bytes gives both."""
    sha = hashlib.sha256()
    return (sha if remote.algorithm == "sha256" else hashlib.md5()), sha


def verify(path: str, remote: RemoteFile) -> Optional[str]:
    """The sha256 of ``path`` if its hash is the one Keras publishes for ``remote``, else None."""
    key = _identity(path, remote)
    if key in _VERIFIED:
        return _VERIFIED[key]
    published, sha = _hashers(remote)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            published.update(chunk)
            if sha is not published:
                sha.update(chunk)
    if published.hexdigest() != remote.file_hash:
        return None
    if _identity(path, remote) == key:  # unchanged while it was read
        _VERIFIED[key] = sha.hexdigest()
    return sha.hexdigest()


def describe_damage(path: str, remote: RemoteFile) -> str:
    size = os.path.getsize(path)
    return (f"the Keras cache file {path} is damaged or truncated ({size:,} bytes; its {remote.algorithm} is not the "
            f"{remote.file_hash} Keras publishes)")


def fixes(remote: RemoteFile, path: str) -> str:
    """The ways to provide the file without this download, for error messages."""
    return (f"Fix: set {MIRROR_ENV} to a mirror that holds {remote.name} (https://, http://, file://, gs:// or a local "
            f"directory), or copy {remote.name} ({remote.algorithm} {remote.file_hash}) to {path}, or set model.weights to a "
            f"weights file (.weights.h5, .h5 or .keras, local or gs://); --set model.weights=none trains from scratch instead")


# ---------------------------------------------------------------------- ensuring


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure(remote: RemoteFile, cache_dir: str, *, download: bool = True,
           log: Callable[[str], None] = _log_stderr) -> Cached:
    """``<cache_dir>/<remote.name>``, verified; downloaded first if missing or damaged (see the module docstring).

    ``download=False`` only checks: a missing or damaged file is then a :class:`DownloadError`.
    """
    try:
        return _ensure(remote, cache_dir, download, log)
    except OSError as e:  # reading or writing the cache itself (permissions, a full disk)
        where = f": {e.filename}" if e.filename else f" in {cache_dir}"
        raise DownloadError(f"{remote.label or remote.name}: cannot use the Keras cache ({e.strerror or e}{where}); fix its "
                            f"permissions or free space, or set KERAS_HOME to another directory") from None


def _ensure(remote: RemoteFile, cache_dir: str, download: bool, log) -> Cached:
    path = os.path.join(cache_dir, remote.name)
    state = None
    if os.path.isfile(path):
        sha = verify(path, remote)
        if sha:
            return Cached(path, sha)
        state = describe_damage(path, remote)
    url = source_url(remote)
    if not download:
        state = state or f"the Keras cache file {path} is missing"
        raise DownloadError(f"{remote.label or remote.name}: {state}; a run downloads it from {url} first")
    timeout = timeout_s()
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"{remote.label or remote.name}: cannot create the Keras cache directory {cache_dir} ({e.strerror}); "
                            f"set KERAS_HOME to a writable directory") from None
    with _locked(path, remote, log):
        # Another process may have fetched it while this one waited for the lock.
        if os.path.isfile(path):
            sha = verify(path, remote)
            if sha:
                return Cached(path, sha)
            state = describe_damage(path, remote)
        state = state or f"the Keras cache file {path} is missing"
        return _download(remote, url, path, timeout, state, log)


@contextlib.contextmanager
def _locked(path: str, remote: RemoteFile, log):
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock_path = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DownloadError(f"{remote.label or remote.name}: cannot create the lock file {lock_path} ({e.strerror}); "
                            f"set KERAS_HOME to a writable directory") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"keras_tl: waiting for another process that is downloading {remote.name} (lock {lock_path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _download(remote: RemoteFile, url: str, path: str, timeout: float, state: str, log) -> Cached:
    cache_dir = os.path.dirname(path)
    label = remote.label or remote.name
    # Under the lock, any temporary file of this name is left over from a killed download.
    for stale in glob.glob(os.path.join(glob.escape(cache_dir), f".{glob.escape(remote.name)}.*.part")):
        with contextlib.suppress(OSError):
            os.unlink(stale)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{remote.name}.", suffix=".part")
    log(f"keras_tl: downloading {label} from {url} to {path}")
    t0 = time.monotonic()
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        published, sha = _hashers(remote)
        with os.fdopen(fd, "wb") as out:
            size = _copy(url, out, (published,) if sha is published else (published, sha), timeout, remote.name)
            out.flush()
            os.fsync(out.fileno())
        if published.hexdigest() != remote.file_hash:
            raise _Failure(f"it served {size:,} bytes whose {remote.algorithm} is {published.hexdigest()}, not the "
                           f"{remote.file_hash} Keras publishes for {remote.name} (a wrong or damaged file; nothing was written to the cache)")
        os.replace(tmp, path)
    except _Failure as e:
        _unlink(tmp)
        timeout_note = f" ({TIMEOUT_ENV}={timeout:g})" if e.timed_out else ""
        raise DownloadError(f"{label}: cannot download {url}: {e}{timeout_note}; {state}. {fixes(remote, path)}") from None
    except BaseException:
        _unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(cache_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    _VERIFIED[_identity(path, remote)] = sha.hexdigest()
    log(f"keras_tl: downloaded {size / 1e6:.1f} MB in {time.monotonic() - t0:.1f} s; {remote.algorithm} matches Keras's "
        f"({remote.file_hash}); sha256 {sha.hexdigest()}")
    return Cached(path, sha.hexdigest(), url)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# ------------------------------------------------------------------------ copying


class _Failure(Exception):
    def __init__(self, msg: str, timed_out: bool = False):
        super().__init__(msg)
        self.timed_out = timed_out


class _Read1:
    """``read1`` for streams that only have ``read`` (tf.io.gfile.GFile)."""

    def __init__(self, f):
        self._f = f

    def read1(self, n):
        return self._f.read(n)

    def close(self):
        self._f.close()


def _open(url: str, timeout: float):
    """(a stream with ``read1``, its length in bytes or None)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower() if "://" in url else ""
    if scheme in ("http", "https"):
        resp = urllib.request.urlopen(url, timeout=timeout)  # the socket timeout bounds connect and each read
        length = resp.headers.get("Content-Length")
        return resp, int(length) if length and length.strip().isdigit() else None
    if scheme in _GFILE_SCHEMES:
        import tensorflow as tf

        size = tf.io.gfile.stat(url).length
        return _Read1(tf.io.gfile.GFile(url, "rb")), size
    local = urllib.request.url2pathname(parts.path) if scheme == "file" else url
    f = open(local, "rb")
    return f, os.fstat(f.fileno()).st_size


def _pump(url: str, timeout: float, q: "queue.Queue", stop: threading.Event) -> None:
    """Reader thread: puts ("length", n), ("data", bytes)..., then ("end", None) or ("error", exception)."""

    def put(item) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    try:
        src, length = _open(url, timeout)
        try:
            put(("length", length))
            while not stop.is_set():
                chunk = src.read1(_CHUNK)
                if not chunk:
                    break
                put(("data", chunk))
        finally:
            src.close()
        put(("end", None))
    except BaseException as e:  # explained by the consumer
        put(("error", e))


def _copy(url: str, out, hashers, timeout: float, name: str) -> int:
    """Stream ``url`` into ``out`` and ``hashers``; returns the byte count or raises :class:`_Failure`.

    The reading happens in a daemon thread, so that this thread can give up after ``timeout``
    seconds of silence whatever the reader is blocked in (a name lookup, which no socket timeout
    bounds; a TLS handshake; a proxy; gs://). A reader left blocked ends on its own: at its socket
    timeout, or when the resolver gives up.
    """
    q: "queue.Queue" = queue.Queue(maxsize=16)
    stop = threading.Event()
    threading.Thread(target=_pump, args=(url, timeout, q, stop), name="keras_tl-download", daemon=True).start()
    received, length, bar, answered = 0, None, None, False
    period_start, period_bytes = time.monotonic(), 0
    try:
        while True:
            try:
                kind, value = q.get(timeout=timeout)
            except queue.Empty:
                raise _Failure(_silence(timeout, received, answered), timed_out=True) from None
            if kind == "error":
                reason, timed_out = _explain(value, timeout)
                # The reader's own socket timeout, said the same way as this thread's.
                raise _Failure(_silence(timeout, received, answered) if timed_out else reason, timed_out) from None
            if kind == "length":
                length, answered = value, True
                bar = _progress_bar(length, name)
                period_start = time.monotonic()
                continue
            if kind == "end":
                break
            out.write(value)
            for h in hashers:
                h.update(value)
            received += len(value)
            period_bytes += len(value)
            if bar is not None:
                bar.update(len(value))
            now = time.monotonic()
            if now - period_start >= timeout:
                if period_bytes < _MIN_BYTES_PER_PERIOD:
                    raise _Failure(f"stalled: {period_bytes:,} bytes in the last {now - period_start:.1f} s, {received:,} in all "
                                   f"(a download must move {_MIN_BYTES_PER_PERIOD // 1024} KiB per {timeout:g} s)", timed_out=True)
                period_start, period_bytes = now, 0
        if length is not None and received != length:
            raise _Failure(f"the connection closed after {received:,} of {length:,} bytes")
        return received
    finally:
        stop.set()
        if bar is not None:
            bar.close()


def _silence(timeout: float, received: int, answered: bool) -> str:
    if received:
        return f"no data for {timeout:g} s after {received:,} bytes"
    if not answered:
        return f"no answer within {timeout:g} s (the host, a proxy or the name lookup did not respond)"
    return f"the answer started, then no data for {timeout:g} s"


def _progress_bar(length: Optional[int], name: str):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI); ensure() logs start and end.
    return tqdm(total=length, unit="B", unit_scale=True, unit_divisor=1024, desc=name, file=sys.stderr,
                disable=None, leave=False, dynamic_ncols=True)


def _explain(e: BaseException, timeout: float) -> Tuple[str, bool]:
    """(a short reason for a reader's exception, whether it was a timeout)."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}", False
    if isinstance(e, urllib.error.URLError):
        if not isinstance(e.reason, BaseException):
            return " ".join(str(e.reason).split()), False
        e = e.reason
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e.strerror or e})", False
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s", True
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (nothing listens there)", False
    if isinstance(e, (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
        return f"the connection closed mid-transfer ({type(e).__name__})", False
    if isinstance(e, FileNotFoundError):
        return f"no such file: {e.filename}", False
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}" + (f": {e.filename}" if e.filename else ""), False
    msg = getattr(e, "message", None) or str(e)  # tf.errors.* carry .message
    return f"{type(e).__name__}: {' '.join(str(msg).split())[:300]}", False
