"""Prints what the launched script sees; `--exit N` exits with N; `--fail-rank R` raises there."""

import sys

from surge import Accelerator

acc = Accelerator()
args = sys.argv[1:]
# One write per line: lines from several ranks must not interleave mid-line.
sys.stdout.write(f"rank={acc.process_index} world={acc.num_processes} mp={acc.mixed_precision} "
                 f"accum={acc.gradient_accumulation_steps} args={args}\n")
if "--strategy" in args:  # what the launcher's config file and flags made of the strategy
    ds, fsdp = acc.state.deepspeed_plugin, acc.state.fsdp_plugin
    detail = (f" stage={ds.zero_stage} clip={ds.effective_gradient_clipping()}" if ds is not None else
              f" reshard={fsdp.reshard_after_forward} offload={bool(fsdp.cpu_offload)}" if fsdp is not None else "")
    sys.stdout.write(f"rank={acc.process_index} strategy={acc.distributed_type.value}{detail}\n")
sys.stdout.flush()
if "--fail-rank" in args and acc.process_index == int(args[args.index("--fail-rank") + 1]):
    raise RuntimeError(f"deliberate failure on rank {acc.process_index}")
acc.wait_for_everyone()
if "--exit" in args:
    sys.exit(int(args[args.index("--exit") + 1]))
