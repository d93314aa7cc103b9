"""HF Accelerate's ``accelerate.utils.fsdp_utils`` names: FSDP checkpoint files and their
offline merge (see :mod:`surge.checkpoint.fsdp_files` and :mod:`surge.checkpoint.merge`)."""

from surge.checkpoint.fsdp_files import load_fsdp_model, load_fsdp_optimizer, save_fsdp_model, save_fsdp_optimizer
from surge.checkpoint.merge import merge_fsdp_weights

__all__ = ["load_fsdp_model", "load_fsdp_optimizer", "merge_fsdp_weights", "save_fsdp_model", "save_fsdp_optimizer"]
