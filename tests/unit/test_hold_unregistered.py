"""d2kd.utils.modules.hold_unregistered: reachable, but outside parameters, state_dict, train()."""

import pytest
from torch import nn

from d2kd.utils.modules import hold_unregistered


def test_held_module_is_reachable_but_not_registered():
    owner, held = nn.Module(), nn.Linear(2, 3)
    hold_unregistered(owner, "teacher", held)
    assert owner.teacher is held
    assert list(owner.parameters()) == [] and owner.state_dict() == {}
    assert list(owner.children()) == []
    held.eval()
    owner.train()
    assert not held.training  # train() does not reach it


def test_only_modules_can_be_held():
    with pytest.raises(TypeError, match="teacher must be an nn.Module"):
        hold_unregistered(nn.Module(), "teacher", (nn.Linear(1, 1),))
