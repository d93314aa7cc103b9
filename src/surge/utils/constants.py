"""``accelerate.utils.constants``: the file names of Accelerate's checkpoints, with
Accelerate's values.

They name the files surge's reader of Accelerate checkpoints reads (defined once there:
:mod:`surge.checkpoint.accelerate_format`, see [Note: Accelerate checkpoints]); a script
that builds paths from them (``os.path.join(ckpt, SAFE_WEIGHTS_NAME)``) finds the same files
in a folder written by Accelerate's ``save_state``. surge's own checkpoints have their own
layout (``save_state`` docs).
"""

import operator

from surge.checkpoint.accelerate_format import (
    MODEL_NAME,
    OPTIMIZER_NAME,
    RNG_STATE_NAME,
    SAFE_MODEL_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    SAFE_WEIGHTS_PATTERN_NAME,
    SAMPLER_NAME,
    SCALER_NAME,
    SCHEDULER_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    WEIGHTS_PATTERN_NAME,
)
from surge.config.kwargs import PROFILE_PATTERN_NAME

STR_OPERATION_TO_FUNC = {">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
                         "<=": operator.le, "<": operator.lt}
"""The comparisons :func:`surge.utils.compare_versions` takes."""

__all__ = [
    "MODEL_NAME",
    "OPTIMIZER_NAME",
    "PROFILE_PATTERN_NAME",
    "RNG_STATE_NAME",
    "SAFE_MODEL_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "SAFE_WEIGHTS_PATTERN_NAME",
    "SAMPLER_NAME",
    "SCALER_NAME",
    "SCHEDULER_NAME",
    "STR_OPERATION_TO_FUNC",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "WEIGHTS_PATTERN_NAME",
]
