from .distributed import create_ddp_model
from .hooks import TeacherEvalHook, unwrap_model
from .run_info import run_info, write_run_info

__all__ = ["TeacherEvalHook", "create_ddp_model", "unwrap_model", "run_info", "write_run_info"]
