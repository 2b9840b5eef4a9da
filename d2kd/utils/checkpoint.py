"""
Loading checkpoints safely, and turning a distillation checkpoint into a plain student checkpoint.

:class:`SafeCheckpointer` is Detectron2's :class:`DetectionCheckpointer` (same paths and URLs
through PathManager, same model-zoo formats and key conversions) with every file read by
:mod:`d2kd.utils.safe_load`: no weight file can execute code, and an unreadable file names the
setting it came from. d2kd loads every checkpoint through it: the teacher
(``MODEL.KD.TEACHER.WEIGHTS``), ``MODEL.KD.STUDENT_WEIGHTS``, ``MODEL.WEIGHTS`` (training
initialisation and ``--eval-only``), ``--resume``, ``tools/extract_student.py`` and
``tools/predict.py --weights``.
"""

import contextlib
import os
import re
import socket
from typing import Any, Dict, List, Optional
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from .safe_load import (
    BrokenCheckpointError,
    UnsafeCheckpointError,
    restricted_pickle_load,
    safe_load_file,
    safe_torch_load,
)

__all__ = [
    "SafeCheckpointer",
    "ReportingCheckpointer",
    "BrokenCheckpointError",
    "UnsafeCheckpointError",
    "local_weights_path",
    "DEFAULT_DOWNLOAD_TIMEOUT",
    "describe_incompatible",
    "extract_student_state",
    "extract_student_checkpoint",
]


# Seconds a weight download may wait for data (config key MODEL.DOWNLOAD_TIMEOUT).
DEFAULT_DOWNLOAD_TIMEOUT = 60.0


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """Every socket opened inside waits at most ``seconds`` to connect and for each read:
    iopath's download (urllib's ``urlretrieve``) takes no timeout of its own."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds if seconds and seconds > 0 else None)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _timed_out(e: BaseException) -> bool:
    return isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError)


def local_weights_path(path: str, setting: str, timeout: float = DEFAULT_DOWNLOAD_TIMEOUT) -> str:
    """
    A local copy of ``path`` (a local path, ``detectron2://``, ``https://``, any PathManager
    prefix; a ``?query`` is ignored), fetched through PathManager. A download fails when the
    server sends nothing for ``timeout`` seconds (connecting, or at any point of the transfer).

    Raises:
        FileNotFoundError / OSError / TimeoutError naming ``setting`` and ``path``.
    """
    url = urlparse(path)._replace(query="").geturl()  # as DetectionCheckpointer.load does
    try:
        with _socket_timeout(timeout):
            local = PathManager.get_local_path(url)
    except Exception as e:
        if _timed_out(e):
            raise TimeoutError(
                f"{setting}: downloading {path} stalled: the server sent nothing for {timeout:g} s "
                "(MODEL.DOWNLOAD_TIMEOUT; raise it for a slow connection, or download the file "
                "and name the local copy)"
            ) from None
        raise OSError(f"{setting}: cannot fetch {path}: {type(e).__name__}: {e}") from e
    if not os.path.isfile(local):
        raise FileNotFoundError(f"{setting}: no such file: {path}")
    return local


def _zoo_pickle_layout(data: Any, where: str) -> Dict[str, Any]:
    """Detectron2's reading of a ``.pkl``: Detectron2-zoo dict, or Caffe2/Detectron1 blobs."""
    if not isinstance(data, dict):
        raise BrokenCheckpointError(f"{where} holds a {type(data).__name__}, not a dict of weights")
    if "model" in data and "__author__" in data:
        return data  # Detectron2 model-zoo format
    if "blobs" in data:
        data = data["blobs"]
    data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


def _age_key(filename: str):
    """Sort key, oldest first: ``model_<iter>.pth`` by iteration, then ``model_final.pth``."""
    m = re.search(r"(\d+)\.pth$", filename)
    return (os.path.basename(filename) == "model_final.pth", int(m.group(1)) if m else -1, filename)


class SafeCheckpointer(DetectionCheckpointer):
    """
    A :class:`DetectionCheckpointer` that never executes code from a file (see the module
    docstring) and names ``setting`` (the config key or argument the path came from) in errors.
    A download that receives nothing for ``download_timeout`` seconds fails.

    With ``resume``, the model must match the checkpoint exactly: a checkpoint written by a
    different student architecture is refused with the keys named (instead of the optimizer's
    param-group error), and an unreadable last checkpoint names the earlier ones on disk.
    The last report of missing / unexpected / mis-shaped keys is kept in ``self.incompatible``.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        setting: str = "MODEL.WEIGHTS",
        download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
        **kwargs,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.setting = setting
        self.download_timeout = download_timeout
        self.incompatible = None
        self._source: Optional[str] = None
        self._resuming = False

    # ------------------------------------------------------------------------- loading
    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        if path:
            # A clear error for a missing file or URL, or a stalled download; cached after.
            local_weights_path(path, self.setting, self.download_timeout)
        self._source = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._source = None

    def _where(self, filename: str) -> str:
        src = self._source
        return f"{self.setting}: {src or filename}"

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            data = restricted_pickle_load(filename, self.setting, self._source)
            if isinstance(data, dict) and "__author__" in data:
                self.logger.info(f"Reading a file from '{data['__author__']}'")
            return _zoo_pickle_layout(data, self._where(filename))
        if filename.endswith(".pyth"):  # pycls, as Detectron2 reads it
            data = self._torch_load(filename)
            if not isinstance(data, dict) or "model_state" not in data:
                raise BrokenCheckpointError(
                    f"{self._where(filename)}: a .pyth (pycls) checkpoint must hold 'model_state'"
                )
            state = {
                k: v
                for k, v in data["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)  # -> self._torch_load, then Detectron2's URL queries

    def _torch_load(self, f: str) -> Dict[str, Any]:
        data = safe_torch_load(f, self.setting, self._source)
        if not isinstance(data, dict):
            raise BrokenCheckpointError(
                f"{self._where(f)} holds a {type(data).__name__}, not a dict of weights"
            )
        return data

    def _log_incompatible_keys(self, incompatible) -> None:
        self.incompatible = incompatible
        if self._resuming:
            problems = describe_incompatible(incompatible)
            if problems:
                raise ValueError(
                    f"{self.setting}: {self._source} was written by a different model than this "
                    f"config builds ({'; '.join(problems)}): the student architecture (or the "
                    "distillation losses) in the config differ from the run that wrote it. Resume "
                    "with that run's config, or train into a new OUTPUT_DIR without --resume"
                )
        super()._log_incompatible_keys(incompatible)

    # ------------------------------------------------------------------------- resuming
    def _other_checkpoints(self, last: str) -> List[str]:
        try:
            files = self.get_all_checkpoint_files()
        except Exception:  # an unlistable OUTPUT_DIR: nothing to suggest
            return []
        others = [f for f in files if os.path.basename(f) != os.path.basename(last)]
        return sorted(others, key=_age_key, reverse=True)

    def _earlier_checkpoints_hint(self, last: str) -> str:
        marker = os.path.join(self.save_dir, "last_checkpoint")
        others = self._other_checkpoints(last)
        if not others:
            return (
                f"No other checkpoint exists in {self.save_dir}: train without --resume (or into "
                "a new OUTPUT_DIR)"
            )
        names = ", ".join(os.path.basename(f) for f in others)
        return (
            f"Other checkpoints in {self.save_dir} (newest first): {names}; to resume from one, "
            f"write its file name into {marker}"
        )

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Detectron2's ``resume_or_load``, with ``--resume``'s errors naming what to do."""
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        marker = os.path.join(self.save_dir, "last_checkpoint")
        last = self.get_checkpoint_file()
        setting, self.setting = self.setting, f"--resume ({marker} names this file)"
        self._resuming = True
        try:
            if not last or not PathManager.isfile(last):
                raise FileNotFoundError(
                    f"--resume: {marker} names {last or 'nothing'}, which does not exist. "
                    + self._earlier_checkpoints_hint(last)
                )
            return self.load(last)
        except BrokenCheckpointError as e:
            raise BrokenCheckpointError(f"{e}. {self._earlier_checkpoints_hint(last)}") from None
        except ValueError as e:
            if "parameter group" not in str(e):
                raise
            raise ValueError(
                f"--resume: the optimizer state in {last} does not fit this model ({e}): the "
                "student architecture or the distillation losses differ from the run that wrote it"
            ) from None
        finally:
            self.setting, self._resuming = setting, False


def describe_incompatible(incompatible) -> List[str]:
    """Missing / unexpected / mis-shaped keys of a load report, one phrase each (none: [])."""
    if incompatible is None:
        return []
    problems = []
    if incompatible.missing_keys:
        problems.append(f"missing keys {sorted(incompatible.missing_keys)}")
    if incompatible.unexpected_keys:
        problems.append(f"unexpected keys {sorted(incompatible.unexpected_keys)}")
    if incompatible.incorrect_shapes:
        shapes = [
            f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}"
            for k, a, b in incompatible.incorrect_shapes
        ]
        problems.append(f"shape mismatches {shapes}")
    return problems


class ReportingCheckpointer(SafeCheckpointer):
    """
    A :class:`SafeCheckpointer` that keeps the report of missing / unexpected / mis-shaped keys
    in ``self.incompatible`` instead of logging it, so that a caller can refuse a partial load.
    """

    def _log_incompatible_keys(self, incompatible) -> None:
        self.incompatible = incompatible


def extract_student_state(
    state: Dict[str, torch.Tensor], prefix: str = "student."
) -> Dict[str, torch.Tensor]:
    """
    Keep the ``student.*`` entries of a DistillDetector state dict, without the prefix.

    Raises:
        ValueError: when no key has the prefix (not a DistillDetector checkpoint).
    """
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        sample = sorted(state)[:5]
        raise ValueError(
            f"no '{prefix}*' keys: not a d2kd distillation checkpoint (keys start {sample})"
        )
    return out


def extract_student_checkpoint(src: str, dst: str, setting: str = "extract_student.py src") -> int:
    """
    Read the Detectron2 checkpoint ``src`` (``{"model": state, ...}``) of a DistillDetector and
    write ``dst`` holding only the student's weights, loadable by stock Detectron2 for the
    student's own config. Training state (optimizer, scheduler, iteration) is dropped. ``src``
    (any PathManager path or URL) is read without code execution (:func:`safe_load_file`).

    Returns:
        the number of tensors written.
    """
    local = local_weights_path(src, setting)
    ckpt = safe_load_file(local, setting, src)
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    if not isinstance(state, dict):
        raise BrokenCheckpointError(f"{setting}: {src} holds a {type(state).__name__}, not weights")
    student = extract_student_state(state)
    torch.save({"model": student, "__author__": "d2kd extract_student"}, dst)
    return len(student)
