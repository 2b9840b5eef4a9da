from .divergence import DivergenceHook, TrainingDivergedError
from .hooks import TeacherEvalHook, unwrap_model
from .run_info import run_info, write_run_info

__all__ = [
    "DivergenceHook",
    "TrainingDivergedError",
    "TeacherEvalHook",
    "unwrap_model",
    "run_info",
    "write_run_info",
]
