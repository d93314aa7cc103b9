"""Command-line hints (surge/commands/hints.py): launcher flags given after the script,
and "did you mean" for mistyped flags and commands. Nothing is launched."""

import argparse

import pytest

from surge.commands import hints
from surge.commands.launch import add_arguments
from surge.commands.main import CLIError, build_parser, main


@pytest.fixture(scope="module")
def launch_options():
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return hints.arity(parser)


def test_flag_names():
    assert hints.flag_name("--num_processes=2") == "--num_processes"
    assert hints.flag_name("-m") == "-m"
    assert [hints.flag_name(t) for t in ("2", "-3", "-", "--", "train.py", "-1e-3")] == [None] * 6


def test_launcher_flags_after_the_script_are_found_with_their_values(launch_options):
    found = hints.flags_after_script(["--lr", "3e-4", "--num_processes", "2", "--mixed_precision=bf16", "--cpu",
                                      "--fsdp_offload_params", "x.txt", "--zero3_init_flag", "--data", "d"],
                                     launch_options)
    # --fsdp_offload_params takes an optional true|false: "x.txt" is taken as its value, as argparse would.
    assert found == [["--num_processes", "2"], ["--mixed_precision=bf16"], ["--cpu"],
                     ["--fsdp_offload_params", "x.txt"], ["--zero3_init_flag"]]


def test_script_flags_help_one_dash_flags_and_words_after_double_dash_are_left_alone(launch_options):
    assert hints.flags_after_script(["--help", "-h", "-m", "x", "--lr", "1", "--", "--num_processes", "2"],
                                    launch_options) == []
    # A script that spells the flag out defines it itself: its flag, no warning.
    source = 'p.add_argument("--mixed_precision", default="no")\np.add_argument("--zero_stage_x")\n'
    assert hints.flags_after_script(["--mixed_precision", "bf16", "--zero_stage", "2"], launch_options,
                                    script_source=source) == [["--zero_stage", "2"]]


def test_the_warning_names_the_flags_and_the_command_in_the_right_order(launch_options):
    one = hints.flags_after_script_warning("examples/train.py", ["--num_processes", "2"], launch_options)
    assert one == ("surge launch: warning: --num_processes comes after the script, so it goes to train.py, not the "
                   "launcher; put launcher flags before the script: surge launch --num_processes 2 examples/train.py")
    two = hints.flags_after_script_warning("pkg.train", ["--lr", "1", "--num_processes=2", "--cpu", "my data"],
                                           launch_options, module=True)
    assert two.startswith("surge launch: warning: --num_processes and --cpu come after the script, so they go to "
                          "pkg.train, not the launcher;")
    assert two.endswith(": surge launch --num_processes=2 --cpu -m pkg.train --lr 1 'my data'")
    assert hints.flags_after_script_warning("train.py", ["--lr", "1"], launch_options) is None


def test_unknown_flags_before_the_script(launch_options):
    def before(argv, options):
        return hints.unknown_flags(argv, options, script_first=True)

    assert before(["--num_proceses", "2", "train.py", "--x"], launch_options) == ["--num_proceses"]
    assert before(["--num_processes", "2", "--mixed_precison", "bf16", "t.py"], launch_options) == ["--mixed_precison"]
    assert before(["--num_processes=2", "--foo=1", "--cpu", "t.py", "--bar"], launch_options) == ["--foo=1"]
    assert before(["--cpu", "-m", "pkg.train", "--bogus"], launch_options) == []
    assert before(["--", "--bogus"], launch_options) == []


def test_unknown_flags_of_a_command_with_abbreviations():
    options = {"--params": None, "--gpu-memory": None, "--gpu_memory": None, "--json": 0, "--num_processes": "+"}
    assert hints.unknown_flags(["--param", "7e9", "--gpu_memroy", "3", "model", "--json"], options,
                               abbreviations=True) == ["--gpu_memroy"]
    assert hints.unknown_flags(["--num_processes", "1", "8", "--jsn", "--gpu", "5"], options,
                               abbreviations=True) == ["--jsn"]  # --gpu: ambiguous, argparse says so
    assert hints.unknown_flags(["--param", "7e9"], options) == ["--param"]


def test_did_you_mean(launch_options):
    assert hints.suggest("--num_proceses=2", launch_options) == "--num_processes"
    assert hints.suggest("--completely-different", launch_options) is None
    assert hints.did_you_mean(["--num_proceses", "2"], launch_options) == "; did you mean --num_processes?"
    assert hints.did_you_mean(["--num_proceses", "--mixed_precison"], launch_options) == (
        "; did you mean --num_processes (for --num_proceses), --mixed_precision (for --mixed_precison)?")
    assert hints.did_you_mean(["--zzzz"], launch_options) == ""


@pytest.mark.parametrize("argv, expected", [
    # argparse reads the first as script "2" with an unrecognized --num_proceses; the user gets the typo.
    (["launch", "--num_proceses", "2", "train.py"],
     ("surge launch: error: unrecognized arguments: --num_proceses; did you mean --num_processes? "
      "(see `surge launch --help`)")),
    (["launch", "--num_proceses=2", "train.py"], "--num_proceses=2; did you mean --num_processes?"),
    (["launch", "--num_proceses", "2"], "--num_proceses; did you mean --num_processes?"),  # no script at all
    (["launch", "--num_processes", "2", "--mixed_precison", "bf16", "t.py"], "did you mean --mixed_precision?"),
    (["env", "--jsn"], "surge env: error: unrecognized arguments: --jsn; did you mean --json? (see `surge env --"),
    (["config", "--defualt"], "did you mean --default? (see `surge config --help`)"),
    (["estimate-memory", "--params", "7e9", "--gpu_memroy", "3"], "did you mean --gpu_memory?"),
    (["lanch", "train.py"], "; did you mean launch? (see `surge --help`)"),
])
def test_mistyped_flags_and_commands_get_a_suggestion(argv, expected):
    with pytest.raises(CLIError) as error:
        build_parser().parse_args(argv)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_mistyped_launch_flag_is_one_line_and_exit_code_2(capsys):
    assert main(["launch", "--num_proceses", "2", "train.py"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean --num_processes?" in err and "does not exist" not in err
