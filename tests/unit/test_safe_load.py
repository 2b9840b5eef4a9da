"""Weight files never execute code; broken files are named with the setting they came from."""

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from d2kd.utils.safe_load import (
    BrokenCheckpointError,
    UnsafeCheckpointError,
    restricted_pickle_load,
    safe_load_file,
    safe_torch_load,
)


class _Payload:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zoo_pkl(path, protocol=2):
    data = {
        "model": OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.zeros(3)),
        "__author__": "Detectron2 Model Zoo",
        "matching_heuristics": True,
    }
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return data


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_code_in_a_weight_file_is_refused_and_not_run(tmp_path, suffix):
    marker = tmp_path / "MARKER"
    path = str(tmp_path / f"evil{suffix}")
    payload = {"model": {"w": np.zeros(2)}, "x": _Payload(marker)}
    if suffix == ".pth":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError) as e:
        safe_load_file(path, "MODEL.KD.TEACHER.WEIGHTS")
    msg = str(e.value)
    assert "MODEL.KD.TEACHER.WEIGHTS" in msg and path in msg and "system" in msg
    assert "weights_only=False" not in msg
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_zoo_format_pickle_loads(tmp_path, protocol):
    path = str(tmp_path / "model_final.pkl")
    ref = _zoo_pkl(path, protocol)
    data = restricted_pickle_load(path, "MODEL.WEIGHTS")
    assert data["__author__"] == ref["__author__"] and data["matching_heuristics"] is True
    assert np.array_equal(data["model"]["w"], ref["model"]["w"])
    assert data["model"]["w"].dtype == np.float32


def test_numpy1_module_names_are_admitted(tmp_path):
    # NumPy 1.x writes numpy.core.multiarray._reconstruct; NumPy 2.x numpy._core.multiarray.
    raw = pickle.dumps({"w": np.ones(3, dtype=np.float32)}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp_path / "old.pkl"
    path.write_bytes(raw)
    assert np.array_equal(restricted_pickle_load(str(path), "MODEL.WEIGHTS")["w"], np.ones(3))


def test_a_pth_of_tensors_loads(tmp_path):
    path = str(tmp_path / "ok.pth")
    torch.save({"model": {"w": torch.arange(4.0)}, "iteration": 3}, path)
    out = safe_torch_load(path, "MODEL.WEIGHTS")
    assert out["iteration"] == 3 and torch.equal(out["model"]["w"], torch.arange(4.0))


def _broken_files(tmp_path):
    good_pth, good_pkl = tmp_path / "good.pth", tmp_path / "good.pkl"
    torch.save({"model": {"w": torch.zeros(1000)}}, good_pth)
    _zoo_pkl(good_pkl)
    rng = np.random.default_rng(0)
    cases = {
        "empty.pth": (b"", "empty"),
        "truncated.pth": (good_pth.read_bytes()[:2000], "truncated"),
        "random.pth": (rng.bytes(4096), "not a PyTorch checkpoint"),
        "empty.pkl": (b"", "empty"),
        "truncated.pkl": (good_pkl.read_bytes()[:100], "not a valid pickle"),
        "random.pkl": (rng.bytes(4096), "not a valid pickle"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    return {name: expect for name, (_, expect) in cases.items()}


def test_broken_files_name_the_setting_and_the_file(tmp_path):
    for name, expect in _broken_files(tmp_path).items():
        path = str(tmp_path / name)
        with pytest.raises(BrokenCheckpointError) as e:
            safe_load_file(path, "MODEL.WEIGHTS", source=f"https://example.org/{name}")
        msg = str(e.value)
        assert msg.startswith(f"MODEL.WEIGHTS: https://example.org/{name} (local file {path})")
        assert expect in msg, (name, msg)
        assert "weights_only" not in msg, (name, msg)  # never PyTorch's advice to load unsafely


def test_a_pth_holding_numpy_arrays_loads(tmp_path):
    path = str(tmp_path / "np.pth")
    torch.save({"model": {"w": np.arange(3, dtype=np.float32), "s": np.float64(2.0)}}, path)
    out = safe_torch_load(path, "MODEL.WEIGHTS")
    assert np.array_equal(out["model"]["w"], np.arange(3)) and out["model"]["s"] == 2.0


def _foreign_module(monkeypatch, module: str, name: str, marker):
    """A stand-in for a framework's bookkeeping class (module and name as in its checkpoints),
    whose own __setstate__ would create ``marker``: loading must never run it."""
    import sys
    import types

    mod = types.ModuleType(module)

    def __setstate__(self, state):
        open(marker, "w").close()
        self.__dict__.update(state)

    cls = type(name, (), {"__module__": module, "__setstate__": __setstate__})
    setattr(mod, name, cls)
    parts = module.split(".")
    for i in range(1, len(parts)):  # pickle imports the parent packages first
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(parts[i - 1]))
    monkeypatch.setitem(sys.modules, module, mod)
    return cls


def test_named_bookkeeping_classes_load_as_inert_placeholders(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    hb = _foreign_module(monkeypatch, "mmengine.logging.history_buffer", "HistoryBuffer", marker)
    buf = hb.__new__(hb)
    buf.__dict__.update(_log_history=np.arange(3.0), max_length=10)
    ns = __import__("argparse").Namespace(lr=0.01, epochs=12)
    path = str(tmp_path / "framework.pth")
    torch.save({"state_dict": {"w": torch.ones(2)}, "message_hub": {"b": buf}, "args": ns}, path)
    for m in ("mmengine.logging.history_buffer", "mmengine.logging", "mmengine"):
        monkeypatch.delitem(__import__("sys").modules, m)

    with pytest.raises(UnsafeCheckpointError) as e:  # not admitted: refused, file named
        safe_torch_load(path, "MODEL.KD.TEACHER.WEIGHTS")
    assert path in str(e.value) and "HistoryBuffer" in str(e.value)
    names = ("mmengine.logging.history_buffer.HistoryBuffer", "argparse.Namespace")
    data = safe_load_file(path, "MODEL.KD.TEACHER.WEIGHTS", inert_classes=names)
    assert torch.equal(data["state_dict"]["w"], torch.ones(2))
    stub = data["message_hub"]["b"]
    assert stub.foreign_name == names[0] and not isinstance(stub, hb)
    assert stub.state["max_length"] == 10 and list(stub.state["_log_history"]) == [0, 1, 2]
    assert data["args"].foreign_name == "argparse.Namespace" and data["args"].state["lr"] == 0.01
    assert not marker.exists()  # the real class's __setstate__ never ran


def test_admitted_bookkeeping_classes_do_not_admit_code(tmp_path):
    marker = tmp_path / "MARKER"
    path = str(tmp_path / "evil.pth")
    ns = __import__("argparse").Namespace(x=_Payload(marker))
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": ns}, path)
    with pytest.raises(UnsafeCheckpointError) as e:
        safe_torch_load(path, "MODEL.KD.TEACHER.WEIGHTS", inert_classes=["argparse.Namespace"])
    assert path in str(e.value) and "system" in str(e.value)
    assert not marker.exists()


# ------------------------------------------------------------------- NumPy's pickling (issue 21)
def _numpy_zoo():
    """Arrays of every layout and kind NumPy pickles differently, a scalar and a dtype."""
    return {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "permuted": np.arange(24.0).reshape(2, 3, 4).transpose(1, 0, 2),  # protocol 5: order K
        "strided": np.arange(16.0).reshape(4, 4)[::2],
        "empty": np.zeros((0, 3)),  # protocol 2: __builtin__.bytes
        "half": np.ones(2, np.float16),
        "flags": np.array([True, False]),
        "big_endian": np.arange(3, dtype=">i4"),
        "record": np.zeros(2, dtype=[("a", "f4"), ("b", "i2")]),
        "scalar": np.float32(1.5),
        "dtype": np.dtype("f8"),
    }


def _equal(a, b):
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpys_own_pickles_load_at_every_protocol(tmp_path, protocol):
    raw = pickle.dumps({"model": _numpy_zoo(), "__author__": "me"}, protocol=protocol)
    ref = pickle.loads(raw)["model"]  # what the unrestricted unpickler gives (a trusted file)
    path = tmp_path / "model.pkl"
    path.write_bytes(raw)
    data = restricted_pickle_load(str(path), "MODEL.WEIGHTS")["model"]
    assert [k for k in ref if not _equal(ref[k], data[k])] == []


def _renamed(raw: bytes, old: str, new: str) -> bytes:
    """``raw`` with the string ``old`` (a module name) written as ``new``, frames dropped (the
    Unpickler needs none), so that a NumPy 2.x pickle reads as the NumPy 1.x one."""
    import pickletools

    ops = list(pickletools.genops(raw))
    out = bytearray()
    for (op, arg, pos), (_, _, end) in zip(ops, ops[1:] + [(None, None, len(raw))]):
        if op.name == "FRAME":
            continue
        if op.name == "SHORT_BINUNICODE" and arg == old:
            out += b"\x8c" + bytes([len(new)]) + new.encode()
        else:
            out += raw[pos:end]
    return bytes(out)


def test_numpy1_frombuffer_name_is_admitted(tmp_path):
    raw = pickle.dumps({"w": np.ones(3, dtype=np.float32)}, protocol=5)
    raw = _renamed(raw, "numpy._core.numeric", "numpy.core.numeric")  # NumPy 1.x, protocol 5
    assert b"numpy.core.numeric" in raw
    path = tmp_path / "old.pkl"
    path.write_bytes(raw)
    assert np.array_equal(restricted_pickle_load(str(path), "MODEL.WEIGHTS")["w"], np.ones(3))


class _Call:
    """Unpickles as ``fn(*args)`` where ``fn`` is the NumPy global ``module.name``."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


_NUMERIC = (getattr(np, "_core", None) or np.core).numeric  # NumPy 2.x / 1.x
_POINTER = b"\x10\x32\x54\x76\x98\xba\xdc\x0e"  # read as an object pointer, this would crash


def test_numpy_ndarray_cannot_be_called_on_bytes(tmp_path):
    """numpy.ndarray((1,), "O", buffer) reads the bytes as object pointers: before the fix this
    crashed the interpreter (run in a subprocess so that a crash fails the test cleanly)."""
    import subprocess
    import sys

    path = tmp_path / "crafted.pkl"
    path.write_bytes(pickle.dumps({"x": _Call(np.ndarray, ((1,), np.dtype("O"), _POINTER))}, 2))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    module = os.path.join(repo, "d2kd", "utils", "safe_load.py")  # alone: NumPy, no torch
    code = (
        "import importlib.util as u, sys\n"
        "spec = u.spec_from_file_location('safe_load', sys.argv[1]); m = u.module_from_spec(spec)\n"
        "spec.loader.exec_module(m)\n"
        "try:\n    m.restricted_pickle_load(sys.argv[2], 'MODEL.WEIGHTS')\n"
        "except m.UnsafeCheckpointError as e:\n    print('REFUSED', e)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, module, str(path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-500:]
    assert run.stdout.startswith("REFUSED MODEL.WEIGHTS: ") and str(path) in run.stdout


@pytest.mark.parametrize(
    "call",
    [
        (_NUMERIC._frombuffer, (_POINTER, np.dtype("O"), (1,), "C")),
        (_NUMERIC._frombuffer, (_POINTER, np.dtype([("a", "O")]), (1,), "C")),
        (_NUMERIC._frombuffer, ([1], np.dtype("f4"), (1,), "C")),
        (_NUMERIC._frombuffer, (_POINTER, np.dtype("u1"), "8", "C")),
        (bytes, (10**12,)),  # would allocate a terabyte
    ],
    ids=["object", "record_object", "list", "shape", "bytes_int"],
)
def test_numpy_frombuffer_builds_arrays_and_nothing_else(tmp_path, call):
    path = tmp_path / "crafted.pkl"
    path.write_bytes(pickle.dumps({"x": _Call(*call)}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"MODEL.WEIGHTS: .*crafted.pkl refused"):
        restricted_pickle_load(str(path), "MODEL.WEIGHTS")


def test_a_pth_holding_numpy_arrays_loads_and_ndarray_is_not_called(tmp_path):
    """torch.save writes protocol 2: an empty array needs ``bytes``; numpy.ndarray itself must
    not be callable there either (zero bytes here: null pointers, harmless, but it loaded)."""
    path = tmp_path / "arrays.pth"
    torch.save(_numpy_zoo(), path)
    ref = pickle.loads(pickle.dumps(_numpy_zoo(), protocol=2))  # torch.save's protocol
    got = safe_torch_load(str(path), "MODEL.WEIGHTS")
    assert [k for k in ref if not _equal(ref[k], got[k])] == []
    crafted = tmp_path / "crafted.pth"
    torch.save({"x": _Call(np.ndarray, ((2,), "O", b"\0" * 16))}, crafted)
    with pytest.raises(UnsafeCheckpointError, match=r"crafted.pth refused: numpy.ndarray"):
        safe_torch_load(str(crafted), "MODEL.WEIGHTS")
