"""The deepspeed launcher's flags on `surge launch` (commands/deepspeed_launcher.py)."""

import pytest

from surge.commands.launch import resolve_config
from surge.commands.main import build_parser
from surge.config.schema import ConfigError
from surge.launch.affinity import share_cores


def resolve(*flags, script_args=(), gpus=0):
    from surge.commands import launch

    args = build_parser().parse_args(["launch", *flags, "train.py", *script_args])
    original = launch._gpu_count
    launch._gpu_count = lambda: gpus
    try:
        config, _ = resolve_config(args)
    finally:
        launch._gpu_count = original
    return config, args


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch, tmp_path):
    monkeypatch.delenv("SURGE_CONFIG_FILE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path))


def test_num_gpus_num_nodes_and_machine_zero_map_onto_surge_keys():
    config, args = resolve("--num_gpus", "2")
    assert (config.num_processes, config.num_machines, args.local_rank_arg) == (2, 1, True)
    config, args = resolve("--num_nodes", "2", "--num_gpus", "4", "--master_addr", "10.0.0.1", "--master_port",
                           "29600", "--node_rank", "1")
    assert (config.num_processes, config.num_machines, config.machine_rank) == (8, 2, 1)
    assert (config.main_process_ip, config.main_process_port) == ("10.0.0.1", 29600)
    config, _ = resolve("--num_accelerators", "3")
    assert config.num_processes == 3
    config, _ = resolve("--master_port", "29700", gpus=4)  # no --num_gpus: every GPU, as `deepspeed train.py`
    assert config.num_processes == 4


def test_the_script_gets_local_rank_as_under_deepspeed_unless_told_not_to(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("parser.add_argument('--local_rank', type=int, default=-1)\n")
    assert resolve(script_args=["--deepspeed", "--deepspeed_config", "ds.json"])[1].local_rank_arg
    assert resolve(script_args=["--deepspeed_config=ds.json"])[1].local_rank_arg
    (tmp_path / "train.py").write_text("parser.add_argument('--epochs')\n")  # not declared: not passed
    assert not resolve(script_args=["--deepspeed", "--deepspeed_config", "ds.json"])[1].local_rank_arg
    assert resolve("--num_gpus", "1")[1].local_rank_arg  # a deepspeed launcher flag: passed, as deepspeed does
    assert not resolve("--num_gpus", "2", "--no_local_rank")[1].local_rank_arg
    assert not resolve("--num_processes", "2")[1].local_rank_arg  # accelerate/torchrun style: LOCAL_RANK only


def test_hostfile_include_and_exclude(tmp_path):
    one = tmp_path / "one"
    one.write_text("# a comment\nlocalhost slots=3\n")
    assert resolve("--hostfile", str(one))[0].num_processes == 3
    two = tmp_path / "two"
    two.write_text("node-a slots=2\nnode-b slots=2\n")
    with pytest.raises(ConfigError, match=r"one launcher per machine.*--node_rank"):
        resolve("-H", str(two))
    config, _ = resolve("-H", str(two), "--node_rank", "1")
    assert (config.num_machines, config.num_processes, config.machine_rank, config.main_process_ip) == \
        (2, 4, 1, "node-a")
    config, _ = resolve("--include", "localhost:0,2", gpus=4)
    assert (config.num_processes, config.gpu_ids) == (2, "0,2")
    config, _ = resolve("-e", "localhost:1", gpus=4)
    assert (config.num_processes, config.gpu_ids) == (3, "0,2,3")
    config, _ = resolve("-H", str(two), "-i", "node-b", "--num_gpus", "1")
    assert (config.num_processes, config.num_machines) == (1, 1)
    bad = tmp_path / "bad"
    bad.write_text("node-a 4\n")
    for flags, message in ((["-H", str(bad)], "line 1"), (["-i", "a", "-e", "b"], "cannot be used together"),
                           (["--include", "localhost:x"], "numbers")):
        with pytest.raises(ConfigError, match=message):
            resolve(*flags)


def test_what_surge_cannot_do_is_named(capsys):
    for flags, message in ((["--autotuning", "tune"], "autotuner"), (["--elastic_training"], "--max_restarts"),
                           (["--num_nodes", "2", "--num_gpus", "1", "--master_addr", "h", "--launcher", "pdsh"],
                            "one launcher per machine")):
        with pytest.raises(ConfigError, match=message):
            resolve(*flags)
    config, _ = resolve("--num_gpus", "1", "--autotuning", "run", "--no_ssh", "--ssh_port", "2222",
                        "--enable_each_rank_log", "logs")
    err = capsys.readouterr().err
    assert "autotuner is not offered" in err and "--no_ssh, --ssh_port only apply to DeepSpeed's pdsh" in err
    assert (config.log_dir, config.tee) == ("logs", "3")


def test_bind_cores_shares_the_cores_out_per_local_rank():
    assert share_cores(list(range(8)), 1, 2) == [4, 5, 6, 7]
    assert share_cores([0, 1, 2, 3, 4], 0, 2) == [0, 1]  # the remainder is left unused, as deepspeed
    with pytest.raises(ValueError, match="cannot be shared"):
        share_cores([0], 0, 2)
    assert resolve("--num_gpus", "2", "--bind_cores_to_rank", "--bind_core_list", "0-3")[1].bind_cores == "0-3"
