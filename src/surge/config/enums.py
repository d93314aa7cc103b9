"""HF Accelerate's enums that scripts compare with, by the same names and values (no torch).

``DistributedType`` lives in topology.py (surge reports it); these are the others
``accelerate.utils`` has. Each behaves as Accelerate's: ``"fp16" in PrecisionType``,
``str(PrecisionType.FP16) == "fp16"``, ``PrecisionType.list()``; the ones that subclass
``str`` in Accelerate do here too (they compare equal to their values).
"""

from __future__ import annotations

import enum
from typing import Any


class EnumWithContains(enum.EnumMeta):
    """Lets ``value in SomeEnum`` test the values (Accelerate's metaclass)."""

    def __contains__(cls, item: Any) -> bool:
        try:
            cls(item)
        except ValueError:
            return False
        return True


class BaseEnum(enum.Enum, metaclass=EnumWithContains):
    """An enum whose ``str()`` is its value, with ``list()`` of every value."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def list(cls) -> list[str]:
        """Every value, as strings."""
        return [str(member) for member in cls]


class DDPCommunicationHookType(BaseEnum):
    """DDP communication hooks (``DistributedDataParallelKwargs(comm_hook=..., comm_wrapper=...)``):
    NO, FP16 / BF16 (compress gradients to half precision for the all-reduce), POWER_SGD /
    BATCHED_POWER_SGD (low-rank gradient compression; ``comm_state_option`` configures it)."""

    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"
    POWER_SGD = "power_sgd"
    BATCHED_POWER_SGD = "batched_power_sgd"


class PrecisionType(str, BaseEnum):
    """Mixed-precision modes (the values ``mixed_precision`` accepts)."""

    NO = "no"
    FP8 = "fp8"
    FP16 = "fp16"
    BF16 = "bf16"


class ComputeEnvironment(str, enum.Enum):
    """Where the job runs (surge runs on the local machine or a cluster launcher)."""

    LOCAL_MACHINE = "LOCAL_MACHINE"
    AMAZON_SAGEMAKER = "AMAZON_SAGEMAKER"


class SageMakerDistributedType(str, enum.Enum):
    """SageMaker's distribution modes (names only: surge does not launch on SageMaker)."""

    NO = "NO"
    DATA_PARALLEL = "DATA_PARALLEL"
    MODEL_PARALLEL = "MODEL_PARALLEL"


class DynamoBackend(str, BaseEnum):
    """``torch.compile`` backends by Accelerate's upper-case names (``dynamo_backend`` also
    takes torch's lower-case names)."""

    NO = "NO"
    EAGER = "EAGER"
    AOT_EAGER = "AOT_EAGER"
    INDUCTOR = "INDUCTOR"
    AOT_TS_NVFUSER = "AOT_TS_NVFUSER"
    NVPRIMS_NVFUSER = "NVPRIMS_NVFUSER"
    CUDAGRAPHS = "CUDAGRAPHS"
    OFI = "OFI"
    FX2TRT = "FX2TRT"
    ONNXRT = "ONNXRT"
    TENSORRT = "TENSORRT"
    AOT_TORCHXLA_TRACE_ONCE = "AOT_TORCHXLA_TRACE_ONCE"
    TORCHXLA_TRACE_ONCE = "TORCHXLA_TRACE_ONCE"
    TVM = "TVM"
    HPU_BACKEND = "HPU_BACKEND"
    NEURON = "NEURON"


class RNGType(BaseEnum):
    """Random generators :func:`surge.utils.synchronize_rng_states` can synchronise
    (surge: "torch", "cuda" and "generator"; the others name devices it does not run on)."""

    TORCH = "torch"
    CUDA = "cuda"
    MLU = "mlu"
    SDAA = "sdaa"
    MUSA = "musa"
    NPU = "npu"
    XLA = "xla"
    XPU = "xpu"
    HPU = "hpu"
    NEURON = "neuron"
    GENERATOR = "generator"


class FP8BackendType(str, BaseEnum):
    """The library that runs fp8 training (``Accelerator.fp8_backend``); surge's is torchao
    ("AO"). Transformer Engine and MS-AMP are not supported."""

    NO = "NO"
    TE = "TE"
    MSAMP = "MSAMP"
    AO = "AO"
