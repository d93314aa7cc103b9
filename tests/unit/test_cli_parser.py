"""The CLI's parser, without running anything."""

import pytest

from surge.commands.main import CLIError, build_parser


def test_launch_passes_script_arguments_through_untouched():
    """A script flag that is a prefix of launcher flags (--fsdp vs --fsdp_*) or equal
    to one (--num_processes) belongs to the script once the script is named."""
    args = build_parser().parse_args(["launch", "--num_processes", "2", "train.py", "--fsdp", "FULL",
                                      "--num_processes", "9", "--mixed"])
    assert args.num_processes == 2 and args.script == "train.py"
    assert args.script_args == ["--fsdp", "FULL", "--num_processes", "9", "--mixed"]


def test_launch_flags_before_the_script_are_not_abbreviated():
    with pytest.raises(CLIError, match="unrecognized arguments: --num_proc"):
        build_parser().parse_args(["launch", "--num_proc", "2", "train.py"])


def test_merge_weights_arguments():
    args = build_parser().parse_args(["merge-weights", "ckpt", "out", "--dtype", "bfloat16", "--max-shard-size",
                                      "5GB", "--model_index", "1"])
    assert (args.checkpoint, args.output_dir, args.dtype, args.max_shard_size, args.model_index) == (
        "ckpt", "out", "bfloat16", "5GB", 1)
    with pytest.raises(CLIError, match="invalid choice: 'int8'"):
        build_parser().parse_args(["merge-weights", "ckpt", "out", "--dtype", "int8"])
