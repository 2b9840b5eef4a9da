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
