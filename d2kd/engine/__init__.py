from .distributed import create_ddp_model
from .divergence import DivergenceHook, TrainingDivergedError
from .hooks import CalibrationRecordHook, TeacherEvalHook, unwrap_model
from .run_info import run_info, update_run_info, write_run_info
from .startup import check_num_classes, check_training_data, setup_d2kd_logger

__all__ = [
    "DivergenceHook",
    "TrainingDivergedError",
    "TeacherEvalHook",
    "CalibrationRecordHook",
    "create_ddp_model",
    "unwrap_model",
    "run_info",
    "write_run_info",
    "update_run_info",
    "check_num_classes",
    "check_training_data",
    "setup_d2kd_logger",
]
