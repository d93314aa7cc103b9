"""Two gloo processes: a compiled model trains like the eager one under DDP (the DDP
wrapper compiled) and ZeRO-3 (each sharded block's forward compiled)."""

from __future__ import annotations

import pytest

from surge import Accelerator
from surge.testing import distributed_test
from surge.testing.parity import BlockModel, make_dataset, max_difference, reference_run, surge_run

pytestmark = pytest.mark.distributed


def _parity(**kwargs):
    """Returns the user's module of the prepared model."""
    data = make_dataset(32)
    reference = reference_run(data, global_batch=8, model_fn=BlockModel)
    acc = Accelerator(dynamo_backend="aot_eager", gradient_accumulation_steps=2, **kwargs)
    models = []
    got = surge_run(acc, data, per_process_batch=2, model_fn=BlockModel,
                    on_prepared=lambda model, opt: models.append(acc.unwrap_model(model)))
    assert max_difference(reference, got) < 1e-5
    return models[0]


def check_compiled_ddp_matches_eager():
    _parity()


def check_compiled_zero3_blocks_match_eager():
    blocks = _parity(deepspeed_plugin={"zero_stage": 3}).blocks
    assert all(hasattr(block.forward, "_torchdynamo_orig_callable") for block in blocks)  # compiled per block


test_two_processes = distributed_test([check_compiled_ddp_matches_eager, check_compiled_zero3_blocks_match_eager],
                                      world_size=2)
