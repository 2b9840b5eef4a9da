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
