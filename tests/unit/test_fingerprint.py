"""tools/fingerprint.py: the checksum sees every byte, name and dtype; compare counts
differences."""

import torch

from tools.fingerprint import _digest, compare


def test_digest_sees_values_names_and_dtypes():
    a = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}
    base = _digest(a.items())
    assert base == _digest(dict(reversed(list(a.items()))).items())  # order-free
    changed = dict(a, w=a["w"].clone())
    changed["w"][1, 2] = torch.nextafter(changed["w"][1, 2], torch.tensor(100.0))
    assert _digest(changed.items()) != base
    assert _digest({"v": a["w"], "n": a["n"]}.items()) != base
    assert _digest(dict(a, w=a["w"].double()).items()) != base


def test_compare_counts_differences_and_missing_configs(capsys):
    old = {"c1": {"state": "s", "grad": "g", "loss": {"loss_a": "0x1p+0", "loss_b": "0x1p+1"}}}
    assert compare(old, old) == 0
    new = {"c1": {"state": "s", "grad": "g", "loss": {"loss_a": "0x1p+0", "loss_b": "0x1p+2"}}}
    new["c2"] = new["c1"]
    assert compare(new, old) == 2  # loss_b differs, c2 is new
    assert "c1 loss:loss_b" in capsys.readouterr().out
