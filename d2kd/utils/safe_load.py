"""
Reading weight files without executing code (pure PyTorch + NumPy; no Detectron2).

A ``.pth`` (PyTorch) file is read with ``torch.load(weights_only=True)``. A ``.pkl`` file (the
Detectron2 / Caffe2 model-zoo format: a pickled dict of NumPy arrays) is read by
:class:`RestrictedUnpickler`, which resolves only the globals such files need (NumPy's array and
dtype reconstruction, ``collections.OrderedDict``, ``_codecs.encode`` for protocol-2 byte strings);
any other global (``os.system``, ``builtins.eval``, a user class) is refused before anything runs.

Every error names the setting the file came from (``MODEL.KD.TEACHER.WEIGHTS``, ``MODEL.WEIGHTS``,
...), the file, and what went wrong; none repeats PyTorch's advice to load with
``weights_only=False``.
"""

import os
import pickle
import re
from typing import Any, BinaryIO, Optional

import torch

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

# (module, name) a Detectron2/Caffe2 .pkl may reference. NumPy 1.x writes numpy.core.*, 2.x
# numpy._core.*; both are mapped to whichever this NumPy has.
_NUMPY_CORE = {"numpy.core.multiarray", "numpy._core.multiarray"}
_NUMPY_CORE_NAMES = {"_reconstruct", "scalar"}
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol-2 pickles of bytes written by Python 3
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("__builtin__", "set"),  # Python 2 pickles (Caffe2 / Detectron1 zoo files)
    ("__builtin__", "frozenset"),
}
_NUMPY_DTYPE_CLASSES = re.compile(r"^[A-Z][A-Za-z0-9]*DType$")  # numpy.dtypes.Float32DType, ...

_WHAT_IS_ALLOWED = "NumPy arrays and dtypes, dicts, lists, tuples, strings and numbers"


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A weight file references a global that a weight file never needs (it could run code)."""


class BrokenCheckpointError(RuntimeError):
    """A weight file cannot be read: empty, truncated, or not a checkpoint at all."""


def _where(setting: str, filename: str, source: Optional[str]) -> str:
    if source and source != filename:
        return f"{setting}: {source} (local file {filename})"
    return f"{setting}: {filename}"


class RestrictedUnpickler(pickle.Unpickler):
    """
    An Unpickler that resolves only what a model-zoo ``.pkl`` contains (see the module
    docstring) and no persistent ids. ``setting`` and ``filename`` name the file in errors.
    """

    def __init__(self, file: BinaryIO, setting: str, filename: str, source: Optional[str] = None):
        super().__init__(file, encoding="latin1")
        self._where = _where(setting, filename, source)

    def find_class(self, module: str, name: str) -> Any:
        if module in _NUMPY_CORE and name in _NUMPY_CORE_NAMES:
            import numpy

            core = getattr(numpy, "_core", None) or numpy.core
            return getattr(core.multiarray, name)
        if (module, name) in _ALLOWED or (
            module == "numpy.dtypes" and _NUMPY_DTYPE_CLASSES.match(name)
        ):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self._where} refused: the file asks to load the class/function '{module}.{name}', "
            f"which a weight file never needs (loading it could run code). d2kd reads .pkl weight "
            f"files with a restricted unpickler that admits only {_WHAT_IS_ALLOWED}"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(
            f"{self._where} refused: the file uses pickle persistent ids ({str(pid)[:60]!r}), "
            f"which a Detectron2/Caffe2 .pkl never does; a PyTorch checkpoint should end in .pth"
        )


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
    """What a .pth holding NumPy arrays (some converted checkpoints do) needs beyond tensors."""
    import numpy

    core = getattr(numpy, "_core", None) or numpy.core
    dtypes = [type(numpy.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "?")]
    return [
        core.multiarray._reconstruct,
        core.multiarray.scalar,
        numpy.ndarray,
        numpy.dtype,
        *dtypes,
    ]


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
    empty = _size_reason(filename)
    if empty:
        raise _broken(setting, filename, source, empty)
    try:
        with torch.serialization.safe_globals(_numpy_globals() + _inert_globals(inert_classes)):
            return torch.load(filename, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
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
