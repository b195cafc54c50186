"""Reading PyTorch checkpoints without torch: only tensors and plain containers, nothing run.

``torch.save`` (torch >= 1.6) writes a zip archive with one top folder::

    <archive>/data.pkl      the pickled object; a tensor is the call
                            torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)
                            (or ``_rebuild_tensor_v3(..., dtype)`` for dtypes without a typed
                            storage, e.g. uint16, over an untyped storage of bytes) whose
                            storage is a persistent id
                            ("storage", <storage type>, <key>, <location>, <numel>)
    <archive>/data/<key>    the storage's raw bytes: numel elements of its type
    <archive>/byteorder     "little" or "big" (files without it are little-endian)
    <archive>/version ...   format bookkeeping, not needed to read the file

Older torch (< 1.6, or ``_use_new_zipfile_serialization=False``) writes the legacy stream:
pickles of a magic number, the protocol version (1001) and system information, the object
pickle (whose storage ids carry a sixth field, view metadata, None), the pickled list of
storage keys, then for each key its element count (int64) and its bytes, both little-endian.

The pickle is untrusted. It is read by a ``pickle.Unpickler`` whose ``find_class`` answers
only an explicit allow-list (``ALLOWED``) with stand-ins of this module and refuses every
other global (``posix.system``, ``builtins.eval``, a model class...) before anything of it
could be called; ``persistent_load`` accepts only storage records. torch is never imported:
the stand-ins record what the pickle describes, and tensors are built afterwards with numpy
(``as_strided`` over the storage at the tensor's offset and strides, then copied). The result
holds only numpy arrays (bfloat16 widened to float32, exactly), torch dtypes as their names
(``"torch.float32"``) and plain containers: dict, OrderedDict, list, tuple, set, int, float,
complex, str, bytes, bool and None. Any other content, or a malformed file, raises one
``ConversionError`` whose one-line message names the file and what was found.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, NamedTuple

import numpy as np

from emosup.errors import ConversionError

# The dtype of each typed storage torch pickles (``torch.<Name>Storage``), and the torch dtypes
# a tensor may have (numpy's names; "bfloat16" is widened to float32 on reading).
STORAGE_TYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
          "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128")
UNSUPPORTED_DTYPES = ("float8", "float4", "complex32", "qint", "quint", "QInt", "QUInt", "bits")
UNTYPED_STORAGES = ("torch.storage.UntypedStorage", "torch.UntypedStorage")
ALLOWED = (
    "collections.OrderedDict, _codecs.encode (bytes), torch._utils._rebuild_tensor_v2, "
    "torch._utils._rebuild_tensor_v3, torch._utils._rebuild_parameter, "
    "torch._utils._rebuild_parameter_with_state, torch.storage.UntypedStorage, "
    "torch.FloatStorage and the other typed storages, torch.float32 and the other dtypes"
)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class _Refused(Exception):
    """Raised while reading; ``load_torch_file`` turns it into a ConversionError naming the file."""


# Stand-ins. NamedTuples: no __dict__, no settable attributes and no append/extend/add/
# __setstate__, so no pickle opcode (BUILD, APPENDS...) can change or call through them.
class _StorageType(NamedTuple):
    name: str  # as the pickle spells it, e.g. "torch.FloatStorage"
    dtype: str  # key of _NUMPY_DTYPES


class _DType(NamedTuple):
    name: str  # e.g. "float32"


class _Storage(NamedTuple):
    key: str
    dtype: str  # its elements' type (uint8 for an untyped storage)
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * _NUMPY_DTYPES[self.dtype].itemsize


class _Tensor(NamedTuple):
    storage: _Storage
    dtype: str  # offset, size and stride count elements of this type
    offset: int
    size: tuple
    stride: tuple


_NUMPY_DTYPES = {name: np.dtype("uint16" if name == "bfloat16" else name) for name in DTYPES}


def _short(obj: Any, limit: int = 80) -> str:
    """``repr`` on one line, cut to ``limit`` characters."""
    text = ascii(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name(module: str, name: str) -> str:
    """``module.name`` as written, or quoted and escaped when it is not plain text."""
    text = f"{module}.{name}"
    return text if text.isascii() and text.isprintable() and len(text) <= 200 else _short(text, 200)


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise _Refused(f"{what} is {_short(value)}, expected a non-negative int")
    return value


def _ints(value: Any, what: str) -> tuple:
    if type(value) is not tuple:
        raise _Refused(f"{what} is {_short(value)}, expected a tuple of ints")
    return tuple(_int(v, what) for v in value)


def _tensor(storage, dtype: str, storage_offset, size, stride) -> _Tensor:
    if type(storage) is not _Storage:
        raise _Refused(f"a tensor's storage is {_short(storage)}, not a storage record")
    size = _ints(size, "a tensor's size")
    stride = _ints(stride, "a tensor's stride")
    if len(size) != len(stride):
        raise _Refused(f"a tensor has size {size} but stride {stride}")
    return _Tensor(storage, dtype, _int(storage_offset, "a tensor's storage offset"), size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Stand-in for torch's tensor constructor: records the tensor's place in its storage,
    whose type it has (``requires_grad``, hooks and metadata leave the values as they are)."""
    dtype = storage.dtype if type(storage) is _Storage else None
    return _tensor(storage, dtype, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, dtype=None, metadata=None):
    """The same for a tensor of ``dtype`` over a storage's bytes."""
    if type(dtype) is not _DType:
        raise _Refused(f"a tensor's dtype is {_short(dtype)}, not a torch dtype")
    return _tensor(storage, dtype.name, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Stand-in for torch's Parameter constructor: a parameter is its tensor."""
    if type(data) is not _Tensor:
        raise _Refused(f"a parameter holds {_short(data)}, not a tensor")
    return data


def _encode(text, encoding="utf-8"):
    """Stand-in for ``_codecs.encode``, how protocol-2 pickles spell bytes: latin-1 only."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"refused: _codecs.encode({_short(text)}, {_short(encoding)}) is not how "
                       "a pickle spells bytes")
    return text.encode("latin-1")


_CALLABLES = {
    "collections.OrderedDict": collections.OrderedDict,
    "_codecs.encode": _encode,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Answers the allow-list with stand-ins; refuses every other global and persistent id."""

    def __init__(self, file, legacy: bool, storages: dict):
        super().__init__(file)
        self._legacy = legacy
        self._storages = storages  # key -> _Storage, filled as records are met

    def find_class(self, module, name):
        qualname = f"{module}.{name}"
        if qualname in _CALLABLES:
            return _CALLABLES[qualname]
        if module == "torch" and name in STORAGE_TYPES:
            return _StorageType(qualname, STORAGE_TYPES[name])
        if qualname in UNTYPED_STORAGES:
            return _StorageType(qualname, "uint8")
        if module == "torch" and name in DTYPES:
            return _DType(name)
        if module == "torch" and name.startswith(UNSUPPORTED_DTYPES):
            raise _Refused(f"refused: the pickle holds tensors of dtype {qualname}, which numpy "
                           f"cannot hold (supported: {', '.join(DTYPES)})")
        raise _Refused(f"refused: the pickle asks for {_name(module, name)}, which is not a "
                       f"tensor or a plain container (allowed: {ALLOWED})")

    def persistent_load(self, pid):
        if type(pid) is not tuple or not pid or pid[0] not in ("storage", b"storage"):
            raise _Refused(f"refused: the pickle refers to {_short(pid)}, which is not a tensor "
                           "storage")
        fields = 6 if self._legacy else 5
        if len(pid) != fields:
            raise _Refused(f"a storage record has {len(pid)} fields, expected {fields}: "
                           f"{_short(pid)}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if self._legacy and pid[5] is not None:
            raise _Refused(f"storage {_short(key)} is a storage view (torch < 0.4); re-save the "
                           "checkpoint with a current torch")
        if type(storage_type) is not _StorageType:
            raise _Refused(f"a storage record's type is {_short(storage_type)}, not a torch "
                           "storage type")
        if type(key) is bytes:
            key = key.decode("ascii", "replace")
        if type(key) is not str:
            raise _Refused(f"a storage key is {_short(key)}, expected a str")
        storage = _Storage(key, storage_type.dtype, _int(numel, f"storage {key!r}'s size"))
        if self._storages.setdefault(key, storage) != storage:
            raise _Refused(f"storage {key!r} is declared as {self._storages[key][1:]} and as "
                           f"{storage[1:]}")
        return storage


def _unpickle(file, legacy: bool, storages: dict) -> Any:
    try:
        return _Unpickler(file, legacy, storages).load()
    except _Refused:
        raise
    except Exception as e:  # truncated or malformed pickle, a stand-in called wrongly...
        raise _Refused(f"not a readable torch checkpoint: the pickle is malformed "
                       f"({type(e).__name__}: {_short(str(e), 200)})") from e


def _typed(raw: bytes, key: str, dtype: str, byteorder: str) -> np.ndarray:
    """A storage's bytes as a 1-D native array of ``dtype`` (bfloat16 widened to float32)."""
    if dtype == "bool":
        return np.frombuffer(raw, np.uint8) != 0
    np_dtype = _NUMPY_DTYPES[dtype]
    if len(raw) % np_dtype.itemsize:
        raise _Refused(f"storage {key!r} holds {len(raw)} bytes, not a whole number of {dtype} "
                       "elements")
    order = "<" if byteorder == "little" else ">"
    array = np.frombuffer(raw, np_dtype.newbyteorder(order)).astype(np_dtype, copy=False)
    if dtype == "bfloat16":  # the top half of a float32: exact
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _tensor_array(tensor: _Tensor, storage: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of the tensor's elements from its (typed) storage."""
    if 0 in tensor.size:
        return np.zeros(tensor.size, storage.dtype)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if last >= storage.shape[0]:
        raise _Refused(f"a tensor of size {tensor.size}, stride {tensor.stride} at offset "
                       f"{tensor.offset} reaches past the {storage.shape[0]} {tensor.dtype} "
                       f"elements of storage {tensor.storage.key!r}")
    view = np.lib.stride_tricks.as_strided(
        storage[tensor.offset:], shape=tensor.size,
        strides=tuple(s * storage.itemsize for s in tensor.stride), writeable=False)
    return np.array(view, copy=True, order="C")


class _Storages:
    """The storages' bytes by key, and their typed views, made once per (key, dtype)."""

    def __init__(self, raw: dict, byteorder: str):
        self._raw, self._byteorder, self._typed = raw, byteorder, {}

    def __call__(self, key: str, dtype: str) -> np.ndarray:
        if (key, dtype) not in self._typed:
            self._typed[key, dtype] = _typed(self._raw[key], key, dtype, self._byteorder)
        return self._typed[key, dtype]


def _check_key(key: Any) -> Any:
    if type(key) in (_Tensor, _Storage, _StorageType, _DType):
        raise _Refused("a tensor or torch type is used as a dict key or set member")
    if type(key) in (tuple, frozenset):
        for k in key:
            _check_key(k)
    return key


_ATOMS = (int, float, complex, str, bytes, bool, type(None))


def _materialize(obj: Any, storages: _Storages, memo: dict) -> Any:
    """``obj`` with stand-ins replaced by numpy arrays / names; only plain types pass."""
    if type(obj) in _ATOMS:
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    kind = type(obj)
    if kind is _Tensor:
        out = _tensor_array(obj, storages(obj.storage.key, obj.dtype))
    elif kind is _Storage:  # a bare storage: its elements
        out = storages(obj.key, obj.dtype).copy()
    elif kind is _DType:
        out = f"torch.{obj.name}"
    elif kind in (dict, collections.OrderedDict):
        out = kind()
        memo[id(obj)] = out
        for k, v in kind.items(obj):  # the type's own items(), whatever the instance holds
            out[_check_key(k)] = _materialize(v, storages, memo)
    elif kind is list:
        out = []
        memo[id(obj)] = out
        out.extend(_materialize(v, storages, memo) for v in obj)
    elif kind is tuple:
        out = tuple(_materialize(v, storages, memo) for v in obj)
    elif kind in (set, frozenset):
        out = kind(_check_key(v) for v in obj)
    elif kind is bytearray:
        out = bytes(obj)
    else:
        raise _Refused(f"refused: the pickle holds {_short(obj)} (of type {kind.__name__}), "
                       "which is not a tensor or a plain container")
    memo[id(obj)] = out
    return out


def _read_zip(zf: zipfile.ZipFile) -> tuple[Any, _Storages]:
    pickles = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise _Refused(f"a zip archive with {len(pickles)} <archive>/data.pkl records, not a "
                       "torch.save checkpoint (expected exactly one)")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in zf.namelist():
        byteorder = zf.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise _Refused(f"byteorder record says {byteorder!r}, expected 'little' or 'big'")
    storages: dict[str, _Storage] = {}
    obj = _unpickle(io.BytesIO(zf.read(pickles[0])), legacy=False, storages=storages)
    raw = {}
    for key, storage in storages.items():
        name = f"{prefix}data/{key}"
        try:
            info = zf.getinfo(name)
        except KeyError:
            raise _Refused(f"storage {key!r} has no record {name!r} in the archive") from None
        if info.file_size < storage.nbytes:
            raise _Refused(f"storage {key!r} holds {info.file_size} bytes, {storage.numel} "
                           f"{storage.dtype} elements need {storage.nbytes}")
        with zf.open(info) as f:
            raw[key] = f.read(storage.nbytes)
    return obj, _Storages(raw, byteorder)


def _read_legacy(f) -> tuple[Any, _Storages]:
    size = os.fstat(f.fileno()).st_size
    for what, expected in (("magic number", hex(LEGACY_MAGIC)), ("protocol", str(LEGACY_PROTOCOL))):
        found = _unpickle(f, legacy=True, storages={})
        if type(found) is not int or found != int(expected, 0):
            raise _Refused(f"not a torch checkpoint: a pickle, but its {what} is {_short(found)}, "
                           f"not {expected} (expected a torch.save zip archive, or the legacy "
                           "stream of torch < 1.6)")
    _unpickle(f, legacy=True, storages={})  # system information: byte order and type sizes
    storages: dict[str, _Storage] = {}
    obj = _unpickle(f, legacy=True, storages=storages)
    keys = _unpickle(f, legacy=True, storages={})
    if (type(keys) is not list or any(type(k) is not str for k in keys)
            or sorted(keys) != sorted(storages)):
        raise _Refused(f"the storage key list {_short(keys)} does not match the "
                       f"{len(storages)} storages the pickle uses")
    raw = {}
    for key in keys:
        storage = storages[key]
        head = f.read(8)
        if len(head) != 8:
            raise _Refused(f"the file ends before storage {key!r}")
        (numel,) = struct.unpack("<q", head)
        if numel != storage.numel:
            raise _Refused(f"storage {key!r} has {numel} elements, the pickle says "
                           f"{storage.numel}")
        if storage.nbytes > size - f.tell():
            raise _Refused(f"storage {key!r} needs {storage.nbytes} bytes, the file has "
                           f"{size - f.tell()} left")
        raw[key] = f.read(storage.nbytes)
    return obj, _Storages(raw, "little")


def load_torch_file(path: os.PathLike | str) -> Any:
    """The object ``torch.save`` wrote to ``path``, with tensors as numpy arrays.

    Reads the zip format (torch >= 1.6) and the legacy stream; executes nothing from the file.
    Raises FileNotFoundError naming the path, ConversionError (one line, starting with the
    path) for a refused or unreadable file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        with open(path, "rb") as f:
            start = f.read(4)
            is_zip = zipfile.is_zipfile(f)
            f.seek(0)
            if is_zip:
                with zipfile.ZipFile(f) as zf:
                    obj, storages = _read_zip(zf)
            elif start[:1] == b"\x80":  # a pickle: the legacy stream
                obj, storages = _read_legacy(f)
            elif start == b"PK\x03\x04":
                raise _Refused("a damaged zip archive (truncated? its directory is missing)")
            else:
                raise _Refused(f"not a torch checkpoint (starts with {_short(start)}; expected "
                               "a torch.save zip archive)")
        return _materialize(obj, storages, {})
    except _Refused as e:
        raise ConversionError(f"{path}: {e}") from None
    except Exception as e:  # a damaged archive, a tensor too large for memory...
        raise ConversionError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: "
                              f"{_short(str(e), 200)})") from e
