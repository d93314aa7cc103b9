"""``surge merge-weights``: a checkpoint's model as one safetensors model, offline."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="A checkpoint directory (save_state's, save_checkpoint's tag or its parent "
                                           "with a 'latest' file, a checkpoint DeepSpeed wrote, or any "
                                           "torch.distributed.checkpoint directory).")
    parser.add_argument("output_dir", help="Where to write model.safetensors (or shards plus an index).")
    parser.add_argument("--model_index", "--model-index", dest="model_index", type=int, default=0,
                        help="Which prepared model, in prepare() order (default 0).")
    parser.add_argument("--max_shard_size", "--max-shard-size", dest="max_shard_size", default="10GB",
                        help="Largest file before splitting into shards plus an index (default 10GB).")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="Convert floating-point weights (default: keep the saved dtypes).")
    parser.add_argument("--unsafe_serialization", "--unsafe-serialization", dest="unsafe_serialization",
                        action="store_true", help="Write pytorch_model.bin (torch.save) instead of safetensors.")


def run(args: argparse.Namespace) -> int:
    import os

    from surge.checkpoint.merge import merge_weights

    files = merge_weights(args.checkpoint, args.output_dir, model_index=args.model_index,
                          max_shard_size=args.max_shard_size, dtype=args.dtype,
                          safe_serialization=not args.unsafe_serialization)
    print(f"wrote {', '.join(files)} to {os.path.abspath(args.output_dir)}")
    return 0
