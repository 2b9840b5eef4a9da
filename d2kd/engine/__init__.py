from .hooks import TeacherEvalHook, unwrap_model
from .run_info import run_info, write_run_info

__all__ = ["TeacherEvalHook", "unwrap_model", "run_info", "write_run_info"]
