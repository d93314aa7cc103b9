"""The `deepspeed` launcher's flags on ``surge launch``.

A script written for ``deepspeed --num_gpus 2 train.py --deepspeed --deepspeed_config
ds.json`` runs as ``surge launch --num_gpus 2 train.py --deepspeed --deepspeed_config
ds.json``. The flags map onto surge's keys (``--num_gpus`` is the processes per machine,
``--num_nodes`` the machines, ``--master_addr/--master_port/--node_rank`` machine 0 and
this machine, ``--hostfile/--include/--exclude`` which machines and GPUs), and, as the
deepspeed launcher does, each process gets ``--local_rank=<n>`` before the script's own
arguments (``--no_local_rank``: not); a script run without those flags but with
``--deepspeed_config`` gets it when its source declares ``--local_rank``. DeepSpeed's ways
of reaching other machines (pdsh, MPI, ssh) have no counterpart: surge runs one launcher
per machine; flags that only concern them are accepted and named.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from surge.config.schema import ConfigError

# dest -> (flags, takes a value, help)
_MAPPED = {
    "ds_num_gpus": (("--num_gpus", "--num-gpus", "--num_accelerators", "--num-accelerators"), True,
                    "deepspeed launcher: processes per machine (one per GPU)."),
    "ds_num_nodes": (("--num_nodes", "--num-nodes"), True, "deepspeed launcher: machines in the job."),
    "ds_master_addr": (("--master_addr", "--master-addr"), True, "deepspeed launcher: --main_process_ip."),
    "ds_master_port": (("--master_port", "--master-port"), True, "deepspeed launcher: --main_process_port."),
    "ds_node_rank": (("--node_rank", "--node-rank"), True, "deepspeed launcher: --machine_rank."),
    "ds_hostfile": (("-H", "--hostfile"), True, "deepspeed launcher: a hostfile (`host slots=N` lines)."),
    "ds_include": (("-i", "--include"), True, "deepspeed launcher: hosts/GPUs to use, e.g. localhost:0,1."),
    "ds_exclude": (("-e", "--exclude"), True, "deepspeed launcher: hosts/GPUs to leave out, e.g. localhost:1."),
    "ds_launcher": (("--launcher",), True, ("deepspeed launcher: how other machines are reached (surge: one "
                                           "launcher per machine).")),
    "ds_each_rank_log": (("--enable_each_rank_log", "--enable-each-rank-log"), True,
                         "deepspeed launcher: a directory for each rank's output (--log_dir with --tee 3)."),
    "ds_bind_cores_to_rank": (("--bind_cores_to_rank", "--bind-cores-to-rank"), False,
                              "deepspeed launcher: pin each process to its share of the CPU cores."),
    "ds_bind_core_list": (("--bind_core_list", "--bind-core-list"), True,
                          "deepspeed launcher: the cores to share out, e.g. 0-15,32-47."),
    "ds_autotuning": (("--autotuning",), True, "deepspeed launcher: autotuning (not offered)."),
    "ds_elastic_training": (("--elastic_training", "--elastic-training"), False,
                            "deepspeed launcher: elastic membership (not offered)."),
    "ds_min_elastic_nodes": (("--min_elastic_nodes", "--min-elastic-nodes"), True, argparse.SUPPRESS),
    "ds_max_elastic_nodes": (("--max_elastic_nodes", "--max-elastic-nodes"), True, argparse.SUPPRESS),
}
# Flags only DeepSpeed's multi-machine launchers (pdsh, MPI, ssh) read.
_SSH_ONLY = {"ds_launcher_args": ("--launcher_args", "--launcher-args"), "ds_no_ssh": ("--no_ssh", "--no-ssh"),
             "ds_no_ssh_check": ("--no_ssh_check", "--no-ssh-check"), "ds_force_multi": ("--force_multi",
                                                                                         "--force-multi"),
             "ds_save_pid": ("--save_pid", "--save-pid"), "ds_ssh_port": ("--ssh_port", "--ssh-port"),
             "ds_comment": ("--comment",), "ds_venv_script": ("--venv_script", "--venv-script")}
_VALUELESS = ("ds_no_ssh", "ds_no_ssh_check", "ds_force_multi", "ds_save_pid")
# A script's own arguments that say it was written for the deepspeed launcher.
_DEEPSPEED_SCRIPT_FLAGS = ("--deepspeed", "--deepspeed_config", "--deepscale", "--deepscale_config")


@dataclass
class DeepSpeedLaunch:
    """What the deepspeed launcher's flags ask of surge launch."""

    values: dict[str, Any] = field(default_factory=dict)
    """surge config keys the flags set."""
    notes: list[str] = field(default_factory=list)
    local_rank_arg: bool = False
    """Pass ``--local_rank=<n>`` to each process's script."""
    bind_cores: str | None = None
    """Cores to share out among the local processes ("" for all), or None."""


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the deepspeed launcher's flags (a script written for `deepspeed` runs "
                                      "with `surge launch`)")
    for dest, (flags, takes_value, text) in _MAPPED.items():
        if takes_value:
            group.add_argument(*flags, dest=dest, default=None, help=text)
        else:
            group.add_argument(*flags, dest=dest, action="store_true", help=text)
    group.add_argument("--no_local_rank", "--no-local-rank", dest="ds_no_local_rank", action="store_true",
                       help="deepspeed launcher: do not pass --local_rank=<n> to the script.")
    for dest, flags in _SSH_ONLY.items():
        if dest in _VALUELESS:
            group.add_argument(*flags, dest=dest, action="store_true", help=argparse.SUPPRESS)
        else:
            group.add_argument(*flags, dest=dest, default=None, help=argparse.SUPPRESS)


def _int(flag: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be a whole number") from None
    if value < 0:
        raise ConfigError(f"{flag} {text!r} must be >= 0")
    return value


def read_hostfile(path: str) -> dict[str, int]:
    """DeepSpeed's hostfile: ``hostname slots=N`` per line (``#`` comments), in order.

    Raises:
        ConfigError: a missing file or a line that is not ``host slots=N``.
    """
    hosts: dict[str, int] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"--hostfile {path!r} cannot be read: {exc.strerror or exc}") from None
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        slots = parts[1].partition("=")[2] if len(parts) == 2 and parts[1].startswith("slots=") else ""
        if not slots.isdigit() or parts[0] in hosts:
            raise ConfigError(f"--hostfile {path!r} line {number} ({raw.strip()!r}) must be `hostname slots=N`, "
                              "each host once")
        hosts[parts[0]] = int(slots)
    if not hosts:
        raise ConfigError(f"--hostfile {path!r} lists no hosts; write one `hostname slots=N` line per machine")
    return hosts


def _filter(text: str, flag: str) -> dict[str, list[int] | None]:
    """``host1:0,1@host2`` -> {host1: [0, 1], host2: None (all)}."""
    chosen: dict[str, list[int] | None] = {}
    for item in text.split("@"):
        host, _, slots = item.partition(":")
        if not host:
            raise ConfigError(f"{flag} {text!r}: each part is host or host:0,1, separated by @")
        try:
            chosen[host] = [int(s) for s in slots.split(",")] if slots else None
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: GPU indices after `host:` are numbers like 0,1") from None
    return chosen


def _resources(args: argparse.Namespace, gpus: int) -> dict[str, list[int]]:
    """Hosts and their GPU (slot) indices after --hostfile, --include and --exclude, as the
    deepspeed launcher computes them (no hostfile: this machine, with every GPU)."""
    if args.ds_hostfile is not None:
        hosts = {host: list(range(slots)) for host, slots in read_hostfile(args.ds_hostfile).items()}
    else:
        hosts = {"localhost": list(range(max(gpus, 1)))}
    if args.ds_include is not None and args.ds_exclude is not None:
        raise ConfigError("--include and --exclude cannot be used together (as in deepspeed); keep one")
    if args.ds_include is not None:
        chosen = _filter(args.ds_include, "--include")
        unknown = sorted(set(chosen) - set(hosts))
        if unknown and not (args.ds_hostfile is None and len(chosen) == 1):
            raise ConfigError(f"--include names {', '.join(unknown)}, which the hostfile does not list")
        if args.ds_hostfile is None:  # one machine: its name, and the GPUs as given
            name, wanted = next(iter(chosen.items()))
            hosts = {name: wanted if wanted is not None else hosts["localhost"]}
        else:
            hosts = {h: [s for s in slots if wanted is None or s in wanted]
                     for h, slots in hosts.items() if h in chosen for wanted in (chosen[h],)}
    if args.ds_exclude is not None:
        for host, slots in _filter(args.ds_exclude, "--exclude").items():
            if host in hosts or (args.ds_hostfile is None and len(hosts) == 1):
                key = host if host in hosts else next(iter(hosts))
                hosts[key] = [] if slots is None else [s for s in hosts[key] if s not in slots]
        hosts = {h: s for h, s in hosts.items() if s}
    if not hosts:
        raise ConfigError("--include/--exclude leave no host and GPU to run on")
    return hosts


def _declares_local_rank(args: argparse.Namespace) -> bool:
    """Whether the script's source declares a ``--local_rank`` option (a script written for
    the deepspeed launcher, run with ``--deepspeed_config``, wants it; one written for
    torchrun or accelerate would refuse it)."""
    import re

    if getattr(args, "module", False):
        return False
    try:
        with open(args.script, encoding="utf-8", errors="replace") as f:
            source = f.read()
    except OSError:
        return False
    return re.search(r"""['"]--local[_-]rank['"]""", source) is not None


def resolve(args: argparse.Namespace, gpu_count: Any) -> DeepSpeedLaunch:
    """The surge settings the deepspeed launcher's flags in ``args`` ask for.

    ``gpu_count``: a function giving this machine's GPU count (only called when needed).

    Raises:
        ConfigError: a flag surge cannot honour (autotuning "tune", elastic training,
            several machines from one launcher), named with the surge flags to use.
    """
    out = DeepSpeedLaunch()
    used = [dest for dest in (*_MAPPED, *_SSH_ONLY) if getattr(args, dest, None) not in (None, False)]
    script_style = any(a.split("=", 1)[0] in _DEEPSPEED_SCRIPT_FLAGS for a in getattr(args, "script_args", []))
    out.local_rank_arg = (bool(used) or (script_style and _declares_local_rank(args))) and not args.ds_no_local_rank
    if not used:
        return out
    if args.ds_autotuning is not None:
        if args.ds_autotuning == "tune":
            raise ConfigError("--autotuning tune: DeepSpeed's autotuner is not offered (it runs many trial jobs); "
                              "`surge estimate-memory` shows each strategy's memory")
        out.notes.append(f"--autotuning {args.ds_autotuning}: DeepSpeed's autotuner is not offered; the script runs "
                         "with its own config")
    if args.ds_elastic_training or args.ds_min_elastic_nodes is not None or args.ds_max_elastic_nodes is not None:
        raise ConfigError("--elastic_training (and --min/max_elastic_nodes): a job whose machines come and go is "
                          "not offered; use --max_restarts to restart a failed job")
    ssh = [_SSH_ONLY[d][0] for d in _SSH_ONLY if getattr(args, d, None) not in (None, False)]
    if ssh:
        out.notes.append(f"{', '.join(ssh)} only apply to DeepSpeed's pdsh/MPI/ssh launchers; ignored (surge runs "
                         "one launcher per machine)")
    v = out.values
    machines = _int("--num_nodes", args.ds_num_nodes) if args.ds_num_nodes is not None else None
    if args.ds_master_addr is not None:
        v["main_process_ip"] = args.ds_master_addr
    if args.ds_master_port is not None:
        v["main_process_port"] = _int("--master_port", args.ds_master_port)
    if args.ds_node_rank is not None:
        v["machine_rank"] = _int("--node_rank", args.ds_node_rank)
    if args.ds_launcher is not None:
        v["deepspeed_multinode_launcher"] = args.ds_launcher.lower()
    per_machine = _int("--num_gpus", args.ds_num_gpus) if args.ds_num_gpus is not None else None
    if args.ds_hostfile is not None or args.ds_include is not None or args.ds_exclude is not None:
        hosts = _resources(args, gpu_count() if args.ds_hostfile is None else 0)
        if len(hosts) > 1:
            sizes = {len(s) for s in hosts.values()}
            if len(sizes) > 1 or "machine_rank" not in v:
                raise ConfigError(f"the hostfile/--include name {len(hosts)} machines ({', '.join(hosts)}): surge "
                                  "runs one launcher per machine; on each, run surge launch with --node_rank "
                                  "(or --machine_rank) N, the same hostfile and --master_addr "
                                  f"{args.ds_master_addr or next(iter(hosts))}, with the same number of GPUs on "
                                  "every machine")
            machines = machines or len(hosts)
            v.setdefault("main_process_ip", next(iter(hosts)))
        slots = next(iter(hosts.values()))
        per_machine = per_machine or len(slots)
        if args.ds_hostfile is None and slots != list(range(gpu_count())):
            v["gpu_ids"] = ",".join(map(str, slots))
    if machines is not None:
        v["num_machines"] = machines
    if per_machine is None:
        per_machine = gpu_count() or 1  # as `deepspeed train.py`: every GPU of the machine
    v["num_processes"] = per_machine * (machines or 1)
    if args.ds_each_rank_log is not None:
        v["log_dir"], v["tee"] = args.ds_each_rank_log, "3"
    if args.ds_bind_cores_to_rank:
        out.bind_cores = args.ds_bind_core_list or ""
    elif args.ds_bind_core_list is not None:
        out.notes.append("--bind_core_list without --bind_cores_to_rank does nothing (as in deepspeed)")
    return out
