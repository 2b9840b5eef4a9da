"""Which teacher decoder stage each student stage is distilled from (DETRDistill)."""

import math
from typing import List

__all__ = ["STAGE_MAPS", "stage_mapping"]

STAGE_MAPS = ("uniform", "last")


def stage_mapping(num_student: int, num_teacher: int, mode: str = "uniform") -> List[int]:
    """
    0-based teacher stage for each student stage.

    "uniform": student stage j (1-based) -> teacher stage round(j * K_T / K_S), halves rounded
    up, so the last maps to the last and equal depths map stage by stage (the official
    ``is_layer_by_layer_distill=True``). E.g. 3 student vs 6 teacher stages: 1->2, 2->4, 3->6.
    "last": the teacher's final stage for every student stage (``is_layer_by_layer_distill=False``).

    Raises:
        ValueError: on a non-positive depth or an unknown mode.
    """
    if num_student < 1 or num_teacher < 1:
        raise ValueError(
            f"stage_mapping needs >= 1 stage, got student {num_student}, teacher {num_teacher}"
        )
    if mode == "last":
        return [num_teacher - 1] * num_student
    if mode != "uniform":
        raise ValueError(f'STAGE_MAP "{mode}" is not one of {STAGE_MAPS}')
    out = []
    for j in range(1, num_student + 1):
        t = int(math.floor(j * num_teacher / num_student + 0.5))
        out.append(min(max(t, 1), num_teacher) - 1)
    return out
