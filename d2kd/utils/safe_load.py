"""
Reading weight files without executing code (pure PyTorch + NumPy; no Detectron2).

A ``.pth`` (PyTorch) file is read with ``torch.load(weights_only=True)``. A ``.pkl`` file (the
Detectron2 / Caffe2 model-zoo format: a pickled dict of NumPy arrays) is read by
:class:`RestrictedUnpickler`, which resolves only the globals such files need: what NumPy's own
pickling of arrays, dtypes and scalars emits at protocols 2-5 on NumPy 1.x and 2.x
(``_reconstruct``, ``scalar``, protocol 5's ``_frombuffer``, ``numpy.dtype``, the
``numpy.dtypes`` classes), ``collections.OrderedDict``, and the built-ins protocol 2 uses for byte
strings (``_codecs.encode``, ``bytes``); any other global (``os.system``, ``builtins.eval``, a user
class) is refused before anything runs. The NumPy functions are wrapped so that they build arrays
and nothing else: ``numpy.ndarray`` cannot be called (only passed to ``_reconstruct``), and
``_frombuffer`` takes only a byte buffer, a dtype without Python objects, a shape and an order
(bytes are never read as object pointers).

Every error names the setting the file came from (``MODEL.KD.TEACHER.WEIGHTS``, ``MODEL.WEIGHTS``,
...), the file, and what went wrong; none repeats PyTorch's advice to load with
``weights_only=False``.
"""

import os
import pickle
import re
from typing import Any, BinaryIO, Optional

__all__ = [
    "UnsafeCheckpointError",
    "BrokenCheckpointError",
    "RestrictedUnpickler",
    "restricted_pickle_load",
    "safe_torch_load",
    "safe_load_file",
    "InertObject",
    "inert_class",
]

# (module, name) a Detectron2/Caffe2 .pkl may reference: what NumPy's own pickling of arrays,
# dtypes and scalars emits at protocols 2-5 (found by recording find_class on real pickles),
# containers, and the built-ins protocol 2 uses for byte strings. NumPy 1.x writes numpy.core.*,
# 2.x numpy._core.*; both are mapped to whichever this NumPy has.
_NUMPY_PREFIXES = ("numpy.core.", "numpy._core.")
_ALLOWED = {
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol-2 pickles of bytes written by Python 3
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("__builtin__", "set"),  # Python 2 pickles (Caffe2 / Detectron1 zoo files)
    ("__builtin__", "frozenset"),
}
_NUMPY_DTYPE_CLASSES = re.compile(r"^[A-Z][A-Za-z0-9]*DType$")  # numpy.dtypes.Float32DType, ...

_WHAT_IS_ALLOWED = (
    "the functions NumPy's own pickling of arrays, dtypes and scalars uses (NumPy 1.x and 2.x, "
    "pickle protocols 2-5), dicts, lists, tuples, sets, strings, bytes and numbers"
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A weight file references a global that a weight file never needs (it could run code)."""


class _Refused(pickle.UnpicklingError):
    """A NumPy function was asked for more than building an array (see :func:`_frombuffer`)."""


class BrokenCheckpointError(RuntimeError):
    """A weight file cannot be read: empty, truncated, or not a checkpoint at all."""


def _where(setting: str, filename: str, source: Optional[str]) -> str:
    if source and source != filename:
        return f"{setting}: {source} (local file {filename})"
    return f"{setting}: {filename}"


def _numpy_core():
    import numpy

    return getattr(numpy, "_core", None) or numpy.core


class _NDArrayType:
    """Stands for ``numpy.ndarray`` in a pickle. NumPy's pickles only pass the class to
    ``_reconstruct``; calling ``numpy.ndarray(shape, "O", buffer=...)`` itself would turn bytes
    of the file into object pointers (a crash at best), so this stand-in cannot be called."""

    def __call__(self, *args, **kwargs):
        raise _Refused("numpy.ndarray is not called by NumPy's own pickles")

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NDArrayType()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    """``numpy.core.multiarray._reconstruct`` (protocols 2-5: an empty array, filled by its
    ``__setstate__``), for plain ndarrays only."""
    import numpy

    if subtype is not _NDARRAY:
        raise _Refused(f"_reconstruct of {subtype!r}: only numpy.ndarray is built")
    return _numpy_core().multiarray._reconstruct(numpy.ndarray, shape, dtype)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None) -> Any:
    """
    NumPy's protocol-5 array reconstruction (``numpy._core.numeric._frombuffer``; NumPy 1.x:
    ``numpy.core.numeric._frombuffer``) with its arguments checked first: a byte buffer, a dtype
    without Python objects (bytes are never read as object pointers), a shape of non-negative
    ints, an order of "C", "F" or "K", an axis order that permutes the dimensions.
    """
    import numpy

    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        raise _Refused(f"_frombuffer of a {type(buf).__name__}, not a byte buffer")
    dtype = numpy.dtype(dtype)
    if dtype.hasobject:
        raise _Refused(f"_frombuffer with dtype {dtype} (Python objects)")
    if not isinstance(shape, tuple) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise _Refused(f"_frombuffer with shape {shape!r}")
    if order not in ("C", "F", "K"):
        raise _Refused(f"_frombuffer with order {order!r}")
    array = numpy.frombuffer(buf, dtype=dtype)
    if order == "K" and axis_order is not None:
        if sorted(axis_order) != list(range(len(shape))):
            raise _Refused(f"_frombuffer with axis order {axis_order!r}")
        return array.reshape(shape, order="C").transpose(axis_order)
    return array.reshape(shape, order=order)  # as NumPy's: order "K" alone is an error


def _bytes_like(kind: type):
    def build(*args):
        if args and isinstance(args[0], int):  # bytes(10**12) would allocate that much
            raise _Refused(f"{kind.__name__}(<int>) is not built")
        return kind(*args)

    return build


_BUILD = {"bytes": _bytes_like(bytes), "bytearray": _bytes_like(bytearray)}


def _numpy_global(module: str, name: str) -> Any:
    """The function NumPy's pickles name as ``module.name``, or None."""
    if module == "numpy" and name == "ndarray":
        return _NDARRAY
    if not module.startswith(_NUMPY_PREFIXES):
        return None
    sub = module.split(".", 2)[2]
    if (sub, name) == ("multiarray", "_reconstruct"):
        return _reconstruct
    if (sub, name) == ("multiarray", "scalar"):  # refuses object dtypes itself
        return _numpy_core().multiarray.scalar
    if (sub, name) == ("numeric", "_frombuffer"):
        return _frombuffer
    if (sub, name) == ("_internal", "_convert_to_stringdtype_kwargs"):  # NumPy 2 StringDType
        return getattr(_numpy_core()._internal, name, None)
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """
    An Unpickler that resolves only what a model-zoo ``.pkl`` contains (see the module
    docstring) and no persistent ids. ``setting`` and ``filename`` name the file in errors.
    """

    def __init__(self, file: BinaryIO, setting: str, filename: str, source: Optional[str] = None):
        super().__init__(file, encoding="latin1")
        self._where = _where(setting, filename, source)

    def find_class(self, module: str, name: str) -> Any:
        found = _numpy_global(module, name)
        if found is not None:
            return found
        if module in ("builtins", "__builtin__") and name in _BUILD:
            return _BUILD[name]
        if (module, name) in _ALLOWED or (
            module == "numpy.dtypes" and _NUMPY_DTYPE_CLASSES.match(name)
        ):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self._where} refused: the file asks to load the class/function '{module}.{name}', "
            f"which d2kd does not admit in a weight file (loading it could run code). d2kd reads "
            f".pkl weight files with a restricted unpickler that admits only {_WHAT_IS_ALLOWED}"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(
            f"{self._where} refused: the file uses pickle persistent ids ({str(pid)[:60]!r}), "
            f"which a Detectron2/Caffe2 .pkl never does; a PyTorch checkpoint should end in .pth"
        )


def _crafted(
    setting: str, filename: str, source: Optional[str], e: BaseException
) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{_where(setting, filename, source)} refused: {e}; NumPy's own pickles never ask for "
        "this (the file is crafted, and loading it could read memory as Python objects)"
    )


def _refused_in(e: Optional[BaseException]) -> Optional[BaseException]:
    """The :class:`_Refused` behind ``e`` (PyTorch re-raises it as its own error), or None."""
    for _ in range(8):
        if e is None or isinstance(e, _Refused):
            return e
        e = e.__cause__ or e.__context__
    return None


def _broken(
    setting: str, filename: str, source: Optional[str], reason: str
) -> BrokenCheckpointError:
    return BrokenCheckpointError(
        f"{_where(setting, filename, source)} cannot be read: {reason}. The file is damaged or "
        "is not a checkpoint (an interrupted download or copy leaves a truncated file: fetch or "
        "write it again)"
    )


def _size_reason(filename: str) -> Optional[str]:
    try:
        size = os.path.getsize(filename)
    except OSError:
        return None
    return "the file is empty (0 bytes)" if size == 0 else None


def restricted_pickle_load(
    filename: str, setting: str, source: Optional[str] = None, fileobj: Optional[BinaryIO] = None
) -> Any:
    """
    Unpickle a Detectron2/Caffe2 ``.pkl`` with :class:`RestrictedUnpickler`.

    Args:
        filename: local path (opened unless ``fileobj`` is given).
        setting: the config key / argument the file came from (for errors).
        source: the path or URL as the user gave it, when it differs from ``filename``.
    Raises:
        UnsafeCheckpointError, BrokenCheckpointError.
    """
    empty = _size_reason(filename) if fileobj is None else None
    if empty:
        raise _broken(setting, filename, source, empty)
    f = fileobj if fileobj is not None else open(filename, "rb")
    try:
        return RestrictedUnpickler(f, setting, filename, source).load()
    except UnsafeCheckpointError:
        raise
    except _Refused as e:
        raise _crafted(setting, filename, source, e) from None
    except Exception as e:  # random bytes fail in any of many ways; all mean "not a pickle"
        reason = (
            "it ends too early (truncated)"
            if isinstance(e, EOFError)
            else str(e) or type(e).__name__
        )
        raise _broken(setting, filename, source, f"not a valid pickle ({reason})") from None
    finally:
        if fileobj is None:
            f.close()


def _numpy_globals() -> list:
    """What a .pth holding NumPy arrays (some converted checkpoints do) needs beyond tensors, for
    ``torch.serialization.safe_globals``: the same wrapped functions as the ``.pkl`` reader,
    under NumPy 1.x and 2.x names. ``numpy.ndarray`` resolves to the stand-in that cannot be
    called; the class itself is listed under a name no GLOBAL opcode can spell (it holds a
    newline) so that PyTorch's loader lets ``__setstate__`` fill the arrays ``_reconstruct``
    builds, and nothing else."""
    import numpy

    named = [(_NDARRAY, "numpy.ndarray"), (numpy.ndarray, "d2kd\nnumpy.ndarray, built only")]
    for prefix in _NUMPY_PREFIXES:
        named += [
            (_reconstruct, prefix + "multiarray._reconstruct"),
            (_numpy_core().multiarray.scalar, prefix + "multiarray.scalar"),
            (_frombuffer, prefix + "numeric._frombuffer"),
        ]
    named += [(_BUILD["bytes"], "__builtin__.bytes"), (_BUILD["bytes"], "builtins.bytes")]
    dtypes = {type(numpy.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "?")}
    module = getattr(numpy, "dtypes", None)  # NumPy >= 1.25: every dtype class, as for .pkl
    names = dir(module) if module is not None else []
    dtypes |= {getattr(module, n) for n in names if _NUMPY_DTYPE_CLASSES.match(n)}
    return [*named, numpy.dtype, *sorted(dtypes, key=lambda c: c.__name__)]


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class InertObject:
    """
    A stand-in for a bookkeeping object a framework's checkpoint carries next to its weights
    (mmengine's ``HistoryBuffer`` in ``message_hub``, ``argparse.Namespace`` in ``args``).

    Created by the weights-only unpickler in place of the foreign class, it runs none of that
    class's code: its arguments and pickled state are kept as plain data (``args``, ``state``)
    and the foreign class's name in ``foreign_name``.
    """

    foreign_name = ""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert placeholder for {self.foreign_name}>"


_INERT_CLASSES: dict = {}


def inert_class(full_name: str) -> type:
    """The :class:`InertObject` subclass standing in for ``full_name`` ("argparse.Namespace")."""
    if full_name not in _INERT_CLASSES:
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", full_name):
            raise ValueError(f"not a fully qualified class name: {full_name!r}")
        _INERT_CLASSES[full_name] = type(
            "Inert_" + full_name.replace(".", "_"), (InertObject,), {"foreign_name": full_name}
        )
    return _INERT_CLASSES[full_name]


def _inert_globals(inert_classes) -> list:
    """``(stand-in, "module.Name")`` pairs for torch.serialization.safe_globals."""
    return [(inert_class(name), name) for name in inert_classes]


def safe_torch_load(
    filename: str, setting: str, source: Optional[str] = None, inert_classes=()
) -> Any:
    """
    ``torch.load(filename, map_location="cpu", weights_only=True)`` with d2kd's errors.

    ``inert_classes``: fully qualified names of bookkeeping classes a framework's checkpoint may
    carry (e.g. ``"argparse.Namespace"``); each is loaded as an :class:`InertObject` stand-in
    that runs none of the named class's code. Every other class or function is still refused.

    Raises:
        UnsafeCheckpointError: the file references a global outside PyTorch's weights-only list.
        BrokenCheckpointError: empty, truncated or not a PyTorch file.
    """
    import torch  # here, so that the .pkl reader needs NumPy alone

    empty = _size_reason(filename)
    if empty:
        raise _broken(setting, filename, source, empty)
    try:
        with torch.serialization.safe_globals(_numpy_globals() + _inert_globals(inert_classes)):
            return torch.load(filename, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_in(e)
        if refused is not None:
            raise _crafted(setting, filename, source, refused) from None
        msg = str(e)
        m = _GLOBAL.search(msg)
        if m:
            raise UnsafeCheckpointError(
                f"{_where(setting, filename, source)} refused: the file asks to load "
                f"'{m.group(1)}', which is not a tensor, container or number (loading it could "
                "run code). d2kd reads .pth files with torch.load(weights_only=True) only"
            ) from None
        first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
        if "weights_only" in first or "Weights only" in first:
            first = "unreadable pickle data"
        raise _broken(setting, filename, source, f"not a PyTorch checkpoint ({first})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "central directory" in msg or isinstance(e, EOFError):
            msg = "it ends too early (truncated: the zip archive PyTorch writes has no end record)"
        raise _broken(setting, filename, source, msg) from None


def safe_load_file(
    filename: str, setting: str, source: Optional[str] = None, inert_classes=()
) -> Any:
    """A ``.pkl`` through :func:`restricted_pickle_load`, anything else through
    :func:`safe_torch_load` (with ``inert_classes``, see there)."""
    if filename.endswith(".pkl"):
        return restricted_pickle_load(filename, setting, source)
    return safe_torch_load(filename, setting, source, inert_classes)
