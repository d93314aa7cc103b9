"""The launcher's pieces that need no process: the failure report's trimming and one-liner
(launch/failure.py), the launch options' parsing and the workers' environment
(launch/runner.py), and the NUMA lookup of enable_cpu_affinity (launch/affinity.py) on a
fake sysfs. tests/e2e/test_launch_report.py runs them for real."""

import importlib.util
import os
import traceback

import pytest

from surge.commands.main import build_parser
from surge.config.file import ConfigError, SurgeConfig
from surge.launch import affinity, failure, runner

RUNPY = "<frozen runpy>"
BOOTSTRAP = os.path.join(os.sep, "venv", "site-packages", "surge", "launch", "bootstrap.py")
ELASTIC = os.path.join(os.sep, "venv", "site-packages", "torch", "distributed", "elastic", "errors", "__init__.py")
USER = os.path.join(os.sep, "home", "me", "train.py")
LIBRARY = os.path.join(os.sep, "venv", "site-packages", "torch", "nn", "modules", "module.py")


def _define(filename, source):
    """Functions whose frames carry ``filename``, as if they were defined in that file."""
    namespace = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def _raise_through_the_launcher(error_source="raise ValueError('bad batch')"):
    """A real exception raised by a library the user's code called, under runpy, bootstrap.py
    and torch elastic's @record, as a worker's is."""
    library = _define(LIBRARY, f"def forward():\n    {error_source}\n")
    user = _define(USER, "def step(forward):\n    forward()\n")
    runpy = _define(RUNPY, "def run_code(step, forward):\n    step(forward)\n")
    elastic = _define(ELASTIC, "def wrapper(run_code, step, forward):\n    run_code(step, forward)\n")
    # bootstrap.py catches it: its traceback starts there.
    bootstrap = _define(BOOTSTRAP, "def main(wrapper, *rest):\n    try:\n        wrapper(*rest)\n"
                                   "    except Exception as exc:\n        return exc\n")
    return bootstrap["main"](elastic["wrapper"], runpy["run_code"], user["step"], library["forward"])


def _frames(*names):
    return [traceback.FrameSummary(name, 1, "f") for name in names]


def test_the_launchers_frames_above_the_users_code_are_dropped():
    frames = _frames(RUNPY, BOOTSTRAP, ELASTIC, BOOTSTRAP, RUNPY, USER, LIBRARY, RUNPY, ELASTIC)
    # Below the user's first frame everything stays: the library frames explain the error.
    assert [f.filename for f in failure.user_frames(frames)] == [USER, LIBRARY, RUNPY, ELASTIC]
    assert failure.user_frames(_frames(RUNPY, BOOTSTRAP)) == []  # a syntax error: the exception line says it all
    assert not failure.is_launcher_frame(os.path.join(os.sep, "src", "mysurge", "launch", "bootstrap.py"))


def test_a_workers_traceback_shows_the_users_and_the_librarys_frames():
    exc = _raise_through_the_launcher()
    shown = failure.user_traceback(exc)
    assert shown.startswith("Traceback (most recent call last):\n")
    assert f'File "{USER}", line 2, in step' in shown and f'File "{LIBRARY}", line 2, in forward' in shown
    assert shown.index(USER) < shown.index(LIBRARY)
    assert shown.rstrip().endswith("ValueError: bad batch")
    for hidden in (RUNPY, BOOTSTRAP, ELASTIC):
        assert hidden not in shown
    full = failure.full_traceback(exc, traceback.extract_stack())
    for kept in (RUNPY, BOOTSTRAP, ELASTIC, USER, LIBRARY, __file__):
        assert kept in full


def test_chained_exceptions_are_trimmed_too():
    cause = _raise_through_the_launcher()
    try:
        raise KeyError("missing") from cause
    except KeyError as exc:
        shown = failure.user_traceback(exc)
    assert "ValueError: bad batch" in shown and "The above exception was the direct cause" in shown
    assert "KeyError: 'missing'" in shown and BOOTSTRAP not in shown and LIBRARY in shown


def test_a_lost_peer_is_a_knock_on_and_prints_one_line():
    lost = _raise_through_the_launcher("raise RuntimeError('[pair.cc:553] Connection closed by peer [127.0.0.1]:1')")
    assert failure.is_knock_on(lost)
    try:
        raise ValueError("could not reduce") from lost
    except ValueError as exc:
        assert failure.is_knock_on(exc)  # raised from one
    assert not failure.is_knock_on(_raise_through_the_launcher())
    text = failure.console_text(lost, rank="0", log="/logs/rank0.log", quiet=False)
    assert text == ("[rank0]: lost a peer (a consequence of another rank's failure); full traceback in "
                    "/logs/rank0.log\n")
    # Without a log file to point to, the traceback is not hidden.
    assert "Connection closed by peer" in failure.console_text(lost, rank="0", log=None, quiet=False)


def test_what_a_failing_worker_prints():
    exc = _raise_through_the_launcher()
    lines = failure.console_text(exc, rank="3", log="/logs/rank3.log", quiet=False).splitlines()
    assert all(line.startswith("[rank3]: ") for line in lines)
    assert lines[0] == "[rank3]: Traceback (most recent call last):" and lines[-1] == "[rank3]: ValueError: bad batch"
    assert failure.console_text(exc, rank="3", log="/logs/rank3.log", quiet=True) == "[rank3]: ValueError: bad batch\n"
    timeout = RuntimeError("barrier timed out on rank 3: rank 1 never arrived")  # what hang.explain made of it
    assert failure.console_text(exc, rank="3", log=None, quiet=False, diagnosed=timeout) == ""  # the report is out


def test_the_log_file_collects_each_failure(tmp_path):
    assert failure.write_log(None, "1", "header", "text\n") is None
    path = failure.write_log(str(tmp_path), "1", failure.header("1", "1", "0"), "first\n")
    assert path == str(tmp_path / "rank1.log")
    failure.write_log(str(tmp_path), "1", failure.header("1", "1", "1"), "second\n")
    text = (tmp_path / "rank1.log").read_text()
    assert "rank 1 (local rank 1), restart 0" in text and "restart 1" in text
    assert text.index("first") < text.index("second")
    assert failure.write_log(str(tmp_path / "missing"), "1", "h", "t") is None


def test_the_workers_environment():
    config = SurgeConfig(num_processes=2, debug=True, num_cpu_threads_per_process=3, quiet=True,
                         enable_cpu_affinity=True, gpu_ids="0,1")
    env = runner.worker_environment(config, {"OMP_NUM_THREADS": "1", "SURGE_LOG_DIR": "/stale", "PATH": "/bin"})
    assert env == {"OMP_NUM_THREADS": "3", "TORCH_DISTRIBUTED_DEBUG": "DETAIL", "SURGE_QUIET": "1",
                   "SURGE_CPU_AFFINITY": "1", "CUDA_VISIBLE_DEVICES": "0,1", "PATH": "/bin"}
    env = runner.worker_environment(SurgeConfig(debug=True, enable_cpu_affinity=True, use_cpu=True),
                                    {"TORCH_DISTRIBUTED_DEBUG": "INFO", "OMP_NUM_THREADS": "1"})
    assert env == {"TORCH_DISTRIBUTED_DEBUG": "INFO", "OMP_NUM_THREADS": "1"}  # the user's own, and no GPU to pin to


def test_tee_is_torchs_std_or_a_map_of_local_ranks():
    from torch.distributed.elastic.multiprocessing import Std

    assert runner.parse_tee("3", 2) == Std.ALL and runner.parse_tee("0", 1) == Std.NONE
    assert runner.parse_tee("0:3,1:1", 2) == {0: Std.ALL, 1: Std.OUT}
    with pytest.raises(ConfigError, match=r"tee='4' must be 0 \(none\), 1 \(stdout\), 2 \(stderr\) or 3"):
        runner.parse_tee("4", 2)
    with pytest.raises(ConfigError, match="names local rank 2, but each machine runs 2 processes"):
        runner.parse_tee("0:3,2:1", 2)


def test_rdzv_conf():
    assert runner.parse_rdzv_conf("") == {}
    assert runner.parse_rdzv_conf(" timeout=1800 , read_timeout = 60,") == {"timeout": "1800", "read_timeout": "60"}
    for bad in ("timeout", "=5", "timeout="):
        with pytest.raises(ConfigError, match="is not key=value"):
            runner.parse_rdzv_conf(bad)
    assert runner.rendezvous_conf(SurgeConfig()) == {"rank": 0, "timeout": 900}
    config = SurgeConfig(num_machines=2, num_processes=2, machine_rank=1, main_process_ip="10.0.0.1",
                         rdzv_backend="c10d", rdzv_conf="join_timeout=60")
    assert runner.rendezvous(config) == ("surge", "10.0.0.1:29500", {"rank": 1, "timeout": 60})
    assert runner.rendezvous(SurgeConfig(main_process_port=1234))[1] == "127.0.0.1:1234"
    with pytest.raises(ConfigError, match=r"rdzv_conf key\(s\) 'last_call_timeout' mean nothing to surge's"):
        runner.rendezvous_conf(SurgeConfig(rdzv_conf="timeout=5,last_call_timeout=3"))
    with pytest.raises(ConfigError, match="timeout='soon' must be a whole number of seconds"):
        runner.rendezvous_conf(SurgeConfig(rdzv_conf="timeout=soon"))


def test_etcd_goes_to_torchs_rendezvous_with_rdzv_conf(monkeypatch):
    config = SurgeConfig(num_machines=2, num_processes=2, main_process_ip="10.0.0.9", rdzv_backend="etcd-v2",
                         rdzv_conf="protocol=https,cacert=/ca.pem")
    if importlib.util.find_spec("etcd") is None:
        with pytest.raises(ConfigError, match=r"needs the python-etcd package \(pip install python-etcd\)"):
            runner.rendezvous(config)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "etcd" else real(name, *a))
    assert runner.rendezvous(config) == ("etcd-v2", "10.0.0.9:2379", {"protocol": "https", "cacert": "/ca.pem"})


def test_the_summary_names_the_log_to_read(tmp_path):
    logs = str(tmp_path)
    assert runner._where_to_read(logs, 1, raised=True) == "its output is above"
    (tmp_path / "rank0.log").write_text("knock-on")
    assert runner._where_to_read(logs, 1, raised=False) == (
        f"its output is above; the other ranks' tracebacks are in {logs}")
    (tmp_path / "rank1.log").write_text("cause")
    assert runner._where_to_read(logs, 1, raised=True) == f"full traceback in {tmp_path / 'rank1.log'}"


def test_quiet_has_a_short_flag():
    assert build_parser().parse_args(["launch", "-q", "train.py"]).quiet is True


def test_cpulist_parsing():
    assert affinity.parse_cpulist("0-3,8-11,16\n") == {0, 1, 2, 3, 8, 9, 10, 11, 16}
    assert affinity.parse_cpulist("0-7:2/4") == {0, 1, 4, 5}
    assert affinity.parse_cpulist("\n") == set()
    for bad in ("3-1", "a", "0-3:5/4"):
        with pytest.raises(ValueError):
            affinity.parse_cpulist(bad)


def _sysfs(root, devices, nodes):
    for bus_id, node in devices.items():
        (root / "bus" / "pci" / "devices" / bus_id).mkdir(parents=True)
        (root / "bus" / "pci" / "devices" / bus_id / "numa_node").write_text(f"{node}\n")
    for node, cpulist in nodes.items():
        (root / "devices" / "system" / "node" / f"node{node}").mkdir(parents=True)
        (root / "devices" / "system" / "node" / f"node{node}" / "cpulist").write_text(cpulist + "\n")
    return str(root)


def test_a_gpus_numa_node_and_its_cpus_on_a_fake_sysfs(tmp_path):
    sysfs = _sysfs(tmp_path, {"0000:1b:00.0": 0, "0000:9a:00.0": 1, "0000:05:00.0": -1},
                   {0: "0-3,8-11", 1: "4-7,12-15"})
    assert affinity.numa_node("0000:9A:00.0", sysfs) == 1  # torch's hex may be upper case; sysfs' is not
    assert affinity.numa_node("0000:05:00.0", sysfs) is None  # no NUMA information
    assert affinity.numa_node("0000:ff:00.0", sysfs) is None
    assert affinity.node_cpus(1, sysfs) == {4, 5, 6, 7, 12, 13, 14, 15} and affinity.node_cpus(7, sysfs) == set()
    every = set(range(16))
    assert affinity.cpus_for("0000:9a:00.0", every, sysfs) == {4, 5, 6, 7, 12, 13, 14, 15}
    assert affinity.cpus_for("0000:9a:00.0", {0, 1, 4, 5}, sysfs) == {4, 5}  # within what the process may use
    assert affinity.cpus_for("0000:9a:00.0", {0, 1}, sysfs) == set()  # none of the node's allowed: unchanged
    assert affinity.cpus_for("0000:05:00.0", every, sysfs) == set()


def test_affinity_is_a_silent_no_op_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine")
    before = os.sched_getaffinity(0)
    assert affinity.pin_to_gpu(0, str(tmp_path)) == set()
    assert os.sched_getaffinity(0) == before


def test_a_gpu_worker_is_pinned_to_its_nodes_cpus(tmp_path, monkeypatch):
    """The pinning itself, with the GPU's PCI bus id and the affinity calls faked (no CUDA here)."""
    sysfs = _sysfs(tmp_path, {"0000:9a:00.0": 1}, {0: "0-3", 1: "4-7"})
    pinned = []
    monkeypatch.setattr(affinity, "gpu_bus_id", lambda index: "0000:9a:00.0" if index == 1 else None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: pinned.append((pid, set(cpus))))
    assert affinity.pin_to_gpu(1, sysfs) == {4, 5, 6, 7} and pinned == [(0, {4, 5, 6, 7})]
    assert affinity.pin_to_gpu(0, sysfs) == set() and len(pinned) == 1  # no such GPU: unchanged
