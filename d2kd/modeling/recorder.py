"""
Record what named parts of a model produce during one forward pass, without editing the model.

A *tap* is a string naming what to record:

* ``"backbone"``, ``"head.cls_subnet.2"``: the output of the sub-module of that name
  (``model.get_submodule(name)``), through a forward hook;
* ``"backbone:input"``: the first positional input of that sub-module, through a forward pre-hook;
* ``"label_anchors()"``: the return value of the model's (or a sub-module's) method of that name,
  through a wrapper installed on the instance (the class is not touched).

A module or method called several times in one pass (a head tower applied to each FPN level)
records one entry per call, in call order. Buffers are cleared when recording starts, so nothing
leaks from one iteration into the next; outside a ``with recorder:`` block nothing is stored.

With every entry the recorder keeps the version counters of the tensors in it
(:func:`tensor_versions`), so a reader can tell whether a recorded tensor was modified in place
after it was recorded (e.g. by an ``nn.ReLU(inplace=True)`` that follows the tapped module).
"""

import difflib
from typing import Any, Dict, Iterable, List

from torch import Tensor, nn

__all__ = ["TapRecorder", "resolve_module", "tensor_versions"]


def tensor_versions(obj: Any) -> List[int]:
    """Version counters of every tensor in ``obj`` (a tensor, or lists/tuples/dicts of them), in
    order."""
    if isinstance(obj, Tensor):
        return [obj._version]
    if isinstance(obj, (list, tuple)):
        return [v for x in obj for v in tensor_versions(x)]
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in tensor_versions(x)]
    return []


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """
    Return ``model``'s sub-module called ``name`` ("" is the model itself).

    Raises:
        KeyError: naming the missing module and listing the closest valid names.
    """
    if name == "":
        return model
    modules = dict(model.named_modules())
    if name not in modules:
        names = [n for n in modules if n]
        close = difflib.get_close_matches(name, names, n=10, cutoff=0.5)
        shallow = sorted(n for n in names if n.count(".") <= 1)[:30]
        raise KeyError(
            f'"{name}" is not a sub-module of {type(model).__name__}. '
            f"Closest names: {close}; top-level names: {shallow}"
        )
    return modules[name]


class TapRecorder:
    """
    Records taps of one model. Hooks are installed once, at construction, and kept until
    :meth:`close`; they only store while the recorder is active (inside ``with recorder:``).

    Example::

        rec = TapRecorder(model, ["backbone", "head", "label_anchors()"])
        with rec:
            losses = model(batched_inputs)
        fpn = rec.get("backbone")  # dict {"p3": (N, C, H, W), ...}
    """

    def __init__(self, model: nn.Module, taps: Iterable[str]):
        self.model = model
        self.taps: List[str] = list(dict.fromkeys(taps))  # de-duplicated, order kept
        self._buffers: Dict[str, List[Any]] = {t: [] for t in self.taps}
        self._versions: Dict[str, List[List[int]]] = {t: [] for t in self.taps}
        self._handles: List[Any] = []
        self._wrapped: List[Any] = []  # (owner, method name)
        self.active = False
        for tap in self.taps:
            self._install(tap)

    def _install(self, tap: str) -> None:
        if tap.endswith("()"):
            self._wrap_method(tap)
        elif tap.endswith(":input"):
            module = resolve_module(self.model, tap[: -len(":input")])
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(tap)))
        else:
            module = resolve_module(self.model, tap)
            self._handles.append(module.register_forward_hook(self._hook(tap)))

    def _wrap_method(self, tap: str) -> None:
        path = tap[:-2]
        owner_name, _, method = path.rpartition(".")
        owner = resolve_module(self.model, owner_name)
        original = getattr(owner, method, None)
        if not callable(original):
            raise KeyError(f'"{tap}": {type(owner).__name__} has no method "{method}"')
        buffer, versions = self._buffers[tap], self._versions[tap]

        def wrapper(*args, **kwargs):
            out = original(*args, **kwargs)
            if self.active:
                buffer.append(out)
                versions.append(tensor_versions(out))
            return out

        setattr(owner, method, wrapper)  # instance attribute shadows the class method
        self._wrapped.append((owner, method))

    def _hook(self, tap: str):
        buffer, versions = self._buffers[tap], self._versions[tap]

        def hook(module, inputs, output):
            if self.active:
                buffer.append(output)
                versions.append(tensor_versions(output))

        return hook

    def _pre_hook(self, tap: str):
        buffer, versions = self._buffers[tap], self._versions[tap]

        def hook(module, inputs):
            if self.active:
                buffer.append(inputs[0])
                versions.append(tensor_versions(inputs[0]))

        return hook

    def __enter__(self) -> "TapRecorder":
        for buffer in list(self._buffers.values()) + list(self._versions.values()):
            buffer.clear()
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False

    def get_all(self, tap: str) -> List[Any]:
        """All outputs recorded for ``tap`` in the last pass, in call order."""
        if tap not in self._buffers:
            raise KeyError(f'tap "{tap}" was not requested; requested taps: {self.taps}')
        return self._buffers[tap]

    def get(self, tap: str) -> Any:
        """The output recorded for ``tap``, which must have been produced exactly once."""
        outs = self.get_all(tap)
        if len(outs) != 1:
            raise RuntimeError(f'tap "{tap}" was recorded {len(outs)} times, expected once')
        return outs[0]

    def snapshot(self) -> Dict[str, List[Any]]:
        """A shallow copy of every buffer: tap -> list of outputs."""
        return {tap: list(outs) for tap, outs in self._buffers.items()}

    def versions_snapshot(self) -> Dict[str, List[List[int]]]:
        """tap -> per recorded entry, the version counters of its tensors when it was recorded."""
        return {tap: [list(v) for v in vs] for tap, vs in self._versions.items()}

    def close(self) -> None:
        """Remove every hook and method wrapper."""
        for handle in self._handles:
            handle.remove()
        for owner, method in self._wrapped:
            delattr(owner, method)
        self._handles, self._wrapped = [], []
