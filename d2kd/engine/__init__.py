from .distributed import create_ddp_model
from .divergence import DivergenceHook, TrainingDivergedError
from .hooks import (
    CalibrationRecordHook,
    LossNormalizerHook,
    TeacherEvalHook,
    unwrap_model,
)
from .launcher import dist_backend, launch
from .run_info import check_resumed_teacher, run_info, update_run_info, write_run_info
from .startup import (
    check_eval_only_weights,
    check_num_classes,
    check_training_data,
    setup_d2kd_logger,
)

__all__ = [
    "DivergenceHook",
    "TrainingDivergedError",
    "TeacherEvalHook",
    "CalibrationRecordHook",
    "LossNormalizerHook",
    "create_ddp_model",
    "dist_backend",
    "launch",
    "unwrap_model",
    "run_info",
    "check_resumed_teacher",
    "write_run_info",
    "check_eval_only_weights",
    "update_run_info",
    "check_num_classes",
    "check_training_data",
    "setup_d2kd_logger",
]
