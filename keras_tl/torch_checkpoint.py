"""Read a PyTorch checkpoint's tensors as NumPy arrays without importing torch (or trusting the file).

``torch.save`` writes pickles, and a pickle can call any importable function while it is being
read. This module reads both of torch's formats with a restricted unpickler that resolves only
the names a tensor checkpoint needs (tensor rebuilding, the typed storage classes and
``collections.OrderedDict``, the container of every ``state_dict``); any other global is a
:class:`TorchCheckpointError` naming it, raised before anything is called.

Formats:

- legacy (torch < 1.6, and ``_use_new_zipfile_serialization=False``): five pickles in a row
  (magic number, protocol version, system info, the object, the list of storage keys), then
  each storage's raw bytes in that order, each preceded by its element count (int64, little-endian);
- zip (torch >= 1.6): ``<archive>/data.pkl`` and one record ``<archive>/data/<key>`` per storage,
  optionally ``<archive>/byteorder``.

Every tensor view is bounds-checked against its storage before NumPy's ``as_strided`` is used.
"""

from __future__ import annotations

import io
import pickle  # noqa: S403  (restricted: see _RestrictedUnpickler.find_class)
import struct
import zipfile
from collections import OrderedDict
from typing import Dict

import numpy as np

from keras_tl.errors import WeightsError

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

# torch's typed storage classes → NumPy dtypes (little-endian, as torch writes them).
STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "UntypedStorage": "u1",
}


class TorchCheckpointError(WeightsError):
    """The file is not a tensor checkpoint this reader accepts (or it tries to run code)."""


class _StorageType:
    """Stands for ``torch.<Name>Storage`` inside the pickle: just a dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])

    def __setstate__(self, state):
        raise TorchCheckpointError("torch checkpoint: unexpected state for a storage type")


class _Storage:
    """One storage: its dtype, element count and (once read) its flat array."""

    __slots__ = ("key", "dtype", "numel", "array")

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel, self.array = key, dtype, int(numel), None

    def __setstate__(self, state):
        raise TorchCheckpointError("torch checkpoint: unexpected state for a storage")


class _TensorRef:
    """A tensor waiting for its storage's bytes (the legacy format stores them after the pickle)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise TorchCheckpointError(f"torch checkpoint: a tensor is rebuilt from {type(storage).__name__}, not a storage")
        ints = all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))
        if not ints or len(size) != len(stride):
            raise TorchCheckpointError(f"torch checkpoint: bad tensor geometry offset={offset!r} size={size!r} stride={stride!r}")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
        if last >= storage.numel:
            raise TorchCheckpointError(
                f"torch checkpoint: a tensor of size {tuple(size)} at offset {offset} reaches past its storage "
                f"{storage.key!r} ({storage.numel} elements); the file is corrupt"
            )
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __setstate__(self, state):
        raise TorchCheckpointError("torch checkpoint: unexpected state for a tensor")

    def materialise(self) -> np.ndarray:
        flat = self.storage.array
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :] if flat.size > self.offset else flat[:0],
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        return np.array(view, dtype=flat.dtype.newbyteorder("="))


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, *_ignored):
    return data


# The whole allow-list: (module, name) → what the pickle gets instead of torch's object.
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES if name != "UntypedStorage"})
_ALLOWED[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage")
_ALLOWED[("torch", "UntypedStorage")] = _StorageType("UntypedStorage")


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose only reachable globals are :data:`_ALLOWED`."""

    def __init__(self, file, where: str, persistent_load=None):
        super().__init__(file, encoding="ascii")
        self._where = where
        self._persistent = persistent_load

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise TorchCheckpointError(
                f"{self._where}: refuses to load: the pickle asks for {module}.{name}, which is not tensor data "
                f"(only tensor rebuilding and storage types are allowed); do not trust this file"
            ) from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise TorchCheckpointError(f"{self._where}: unexpected persistent id {pid!r}")
        return self._persistent(pid)


def _load_one(buf: io.BytesIO, where: str, persistent_load=None):
    """The next pickle in ``buf`` (left positioned just after it)."""
    try:
        return _RestrictedUnpickler(buf, where, persistent_load).load()
    except TorchCheckpointError as e:
        msg = str(e)
        if msg.startswith("torch checkpoint: "):  # raised by a placeholder class, which has no path
            raise TorchCheckpointError(f"{where}: {msg[len('torch checkpoint: '):]}") from None
        raise
    except Exception as e:  # truncated or garbled pickle: UnpicklingError, EOFError, ValueError, ...
        raise TorchCheckpointError(f"{where}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None


def _storage_pid(pid, where, n_fields):
    if not (isinstance(pid, tuple) and len(pid) == n_fields and pid[0] in ("storage", b"storage")):
        raise TorchCheckpointError(f"{where}: unexpected persistent id {pid!r} (only tensor storages are allowed)")
    storage_type, key = pid[1], pid[2]
    if not isinstance(storage_type, _StorageType):
        raise TorchCheckpointError(f"{where}: a storage of type {storage_type!r} is not a torch storage type")
    return storage_type, str(key.decode("ascii") if isinstance(key, bytes) else key)


def _read_legacy(data: bytes, where: str):
    buf = io.BytesIO(data)
    if _load_one(buf, where) != _MAGIC_NUMBER:
        raise TorchCheckpointError(f"{where}: not a torch checkpoint (no torch magic number at the start, nor a zip archive)")
    version = _load_one(buf, where)
    if version != _PROTOCOL_VERSION:
        raise TorchCheckpointError(f"{where}: unsupported legacy torch protocol version {version!r}")
    _load_one(buf, where)  # system info: endianness and type sizes of the saving machine
    storages: Dict[str, _Storage] = {}

    def persistent_load(pid):
        storage_type, key = _storage_pid(pid, where, 6)
        numel, view = pid[4], pid[5]
        if view is not None:
            raise TorchCheckpointError(f"{where}: storage views are not supported (storage {key!r})")
        if not isinstance(numel, int) or numel < 0:
            raise TorchCheckpointError(f"{where}: storage {key!r} has a bad size {numel!r}")
        st = storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if st.dtype != storage_type.dtype or st.numel != numel:
            raise TorchCheckpointError(f"{where}: storage {key!r} is declared twice with different types or sizes")
        return st

    obj = _load_one(buf, where, persistent_load)
    keys = _load_one(buf, where)
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        raise TorchCheckpointError(f"{where}: the storage key list does not match the storages the tensors use")
    pos = buf.tell()
    for key in keys:
        st = storages[str(key)]
        if pos + 8 > len(data):
            raise TorchCheckpointError(f"{where}: truncated: storage {st.key!r} is missing")
        (numel,) = struct.unpack("<q", data[pos : pos + 8])
        pos += 8
        nbytes = numel * st.dtype.itemsize
        if numel != st.numel or pos + nbytes > len(data):
            raise TorchCheckpointError(f"{where}: storage {st.key!r}: {numel} elements on disk, {st.numel} expected, or the file is truncated")
        st.array = np.frombuffer(data, dtype=st.dtype, count=numel, offset=pos)
        pos += nbytes
    if pos != len(data):
        raise TorchCheckpointError(f"{where}: {len(data) - pos} unexpected bytes after the last storage")
    return obj


def _read_zip(path: str, where: str):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise TorchCheckpointError(f"{where}: a zip archive without exactly one <archive>/data.pkl: not a torch checkpoint")
        prefix = pkls[0][: -len("data.pkl")]
        order = "<"
        if prefix + "byteorder" in names:
            mark = z.read(prefix + "byteorder")
            if mark not in (b"little", b"big"):
                raise TorchCheckpointError(f"{where}: unknown byteorder {mark!r}")
            order = "<" if mark == b"little" else ">"
        storages: Dict[str, _Storage] = {}

        def persistent_load(pid):
            storage_type, key = _storage_pid(pid, where, 5)
            numel = pid[4]
            if key not in storages:
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise TorchCheckpointError(f"{where}: storage record {record} is missing")
                dtype = storage_type.dtype.newbyteorder(order) if storage_type.dtype.itemsize > 1 else storage_type.dtype
                raw = z.read(record)
                if not isinstance(numel, int) or len(raw) != numel * dtype.itemsize:
                    raise TorchCheckpointError(f"{where}: storage {record}: {len(raw)} bytes, expected {numel} x {dtype.itemsize}")
                st = _Storage(key, dtype, numel)
                st.array = np.frombuffer(raw, dtype=dtype)
                storages[key] = st
            return storages[key]

        obj = _load_one(io.BytesIO(z.read(pkls[0])), where, persistent_load)
    return obj


def _materialise(obj, where):
    if isinstance(obj, _TensorRef):
        return obj.materialise()
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, where)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, where) for v in obj)
    return obj


def load(path: str):
    """The object ``torch.save`` wrote to ``path``, with every tensor as a NumPy array."""
    where = f"torch checkpoint {path}"
    try:
        is_zip = zipfile.is_zipfile(path)
        if is_zip:
            obj = _read_zip(path, where)
        else:
            with open(path, "rb") as f:
                obj = _read_legacy(f.read(), where)
    except (OSError, zipfile.BadZipFile) as e:
        raise TorchCheckpointError(f"{where}: cannot read: {e}") from None
    return _materialise(obj, where)


def load_state_dict(path: str) -> "OrderedDict[str, np.ndarray]":
    """A checkpoint holding a flat ``state_dict`` (name → tensor), as name → NumPy array."""
    obj = load(path)
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()):
        raise TorchCheckpointError(f"torch checkpoint {path}: expected a flat state_dict (name -> tensor), got {type(obj).__name__}")
    return OrderedDict(obj)
