"""TapRecorder on toy modules: capture, per-call lists, inputs, methods, errors, clean-up."""

import pytest
import torch
from torch import nn

from d2kd.modeling.recorder import TapRecorder


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.tower = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())

    def assign(self, x):
        return x.sum()

    def forward(self, x):
        y = self.conv(x)
        outs = [self.tower(y), self.tower(y * 2)]  # the tower runs twice, like a head on 2 levels
        self.assign(y)
        return outs


def test_records_outputs_inputs_and_methods_per_call():
    model = Toy()
    rec = TapRecorder(model, ["conv", "tower", "tower:input", "assign()"])
    x = torch.rand(2, 3, 5, 5)
    with rec:
        outs = model(x)
    assert torch.equal(rec.get("conv"), model.conv(x))
    assert len(rec.get_all("tower")) == 2
    assert torch.equal(rec.get_all("tower")[1], outs[1])
    assert torch.equal(rec.get_all("tower:input")[1], rec.get("conv") * 2)
    assert torch.equal(rec.get("assign()"), rec.get("conv").sum())


def test_buffers_reset_and_inactive_outside_context():
    model = Toy()
    rec = TapRecorder(model, ["conv"])
    with rec:
        model(torch.rand(1, 3, 2, 2))
    model(torch.rand(1, 3, 2, 2))  # outside: nothing stored
    assert len(rec.get_all("conv")) == 1
    with rec:
        model(torch.rand(1, 3, 2, 2))
    assert len(rec.get_all("conv")) == 1
    with pytest.raises(RuntimeError, match="recorded 2 times"):
        with rec:
            model(torch.rand(1, 3, 2, 2))
            model(torch.rand(1, 3, 2, 2))
        rec.get("conv")


def test_unknown_names_raise_with_candidates():
    with pytest.raises(KeyError, match="not a sub-module.*tower"):
        TapRecorder(Toy(), ["towr.0"])
    with pytest.raises(KeyError, match="no method"):
        TapRecorder(Toy(), ["label_anchors()"])
    with pytest.raises(KeyError, match="not requested"):
        TapRecorder(Toy(), ["conv"]).get("tower")


def test_close_removes_hooks_and_wrappers():
    model = Toy()
    rec = TapRecorder(model, ["conv", "assign()"])
    rec.close()
    assert "assign" not in model.__dict__
    assert len(model.conv._forward_hooks) == 0
    with rec:
        model(torch.rand(1, 3, 2, 2))
    assert rec.get_all("conv") == []
