"""``enable_cpu_affinity``: pin a GPU worker to the CPU cores of its GPU's NUMA node.

A worker whose threads run on the other socket reaches its GPU (and the memory its data
is pinned in) across the socket link. The GPU's NUMA node is in sysfs,
``/sys/bus/pci/devices/<PCI bus id>/numa_node``, and the node's cores in
``/sys/devices/system/node/node<N>/cpulist``. launch/bootstrap.py pins the worker before
the user's script runs (threads started later inherit the mask); a process that does not
run bootstrap.py (a single-process job, a ``--no_python`` program) is started through
``python -m surge.launch.affinity``, which pins itself and then execs it. Finding the
GPU's PCI bus id initialises CUDA in that process first (a script that chooses its GPUs by
setting ``CUDA_VISIBLE_DEVICES`` itself should use ``--gpu_ids`` instead). CPU-only machines, a GPU without NUMA
information (a one-node machine: ``numa_node`` is -1) or cores outside the ones this
process may use (a cgroup, Slurm's allocation): nothing is changed.
"""

from __future__ import annotations

import os
import sys

AFFINITY_ENV = "SURGE_CPU_AFFINITY"
"""Set to "1" by the launcher for ``enable_cpu_affinity``; read by launch/bootstrap.py."""
SYSFS = "/sys"


def parse_cpulist(text: str) -> set[int]:
    """The CPUs of a sysfs cpulist: ``"0-3,8-11,16"``; ``"0-31:2/4"`` (the kernel's groups:
    2 of every 4) too.

    Raises:
        ValueError: text that is not a cpulist.
    """
    cpus: set[int] = set()
    for item in text.split(","):
        part = item.strip()
        if not part:
            continue
        span, _, groups = part.partition(":")
        first, _, last = span.partition("-")
        low, high = int(first), int(last or first)
        if high < low or low < 0:
            raise ValueError(f"bad cpulist range {part!r}")
        used, size = (int(n) for n in groups.split("/")) if groups else (1, 1)
        if not 0 < used <= size:
            raise ValueError(f"bad cpulist group {part!r}")
        cpus.update(c for c in range(low, high + 1) if (c - low) % size < used)
    return cpus


def numa_node(pci_bus_id: str, sysfs: str = SYSFS) -> int | None:
    """The NUMA node of a PCI device (``"0000:1b:00.0"``); None when sysfs does not say
    (no such file, or -1 on a machine without NUMA information)."""
    try:
        with open(os.path.join(sysfs, "bus", "pci", "devices", pci_bus_id.lower(), "numa_node")) as f:
            node = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def node_cpus(node: int, sysfs: str = SYSFS) -> set[int]:
    """The CPUs of NUMA node ``node`` (empty when sysfs does not say)."""
    try:
        with open(os.path.join(sysfs, "devices", "system", "node", f"node{node}", "cpulist")) as f:
            return parse_cpulist(f.read())
    except (OSError, ValueError):
        return set()


def cpus_for(pci_bus_id: str, allowed: set[int], sysfs: str = SYSFS) -> set[int]:
    """The CPUs to pin a process using the device ``pci_bus_id`` to: its NUMA node's, among
    the ones ``allowed`` (the process's current mask). Empty: leave the process as it is."""
    node = numa_node(pci_bus_id, sysfs)
    if node is None:
        return set()
    cpus = node_cpus(node, sysfs) & allowed
    return cpus if cpus != allowed else set()


def gpu_bus_id(index: int) -> str | None:
    """The PCI bus id of CUDA device ``index`` (after ``CUDA_VISIBLE_DEVICES``), None on a
    machine without CUDA or without that device."""
    import torch

    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None
    props = torch.cuda.get_device_properties(index)
    try:  # torch's stubs omit the PCI fields (torch/numa/binding.py reads them the same way)
        domain, bus, device = props.pci_domain_id, props.pci_bus_id, props.pci_device_id  # type: ignore[attr-defined]
    except AttributeError:
        return None
    return f"{int(domain):04x}:{int(bus):02x}:{int(device):02x}.0"


def pin_to_gpu(index: int, sysfs: str = SYSFS) -> set[int]:
    """Pin this process to the CPUs of CUDA device ``index``'s NUMA node; the CPUs it was
    pinned to (empty: nothing changed, e.g. no CUDA)."""
    if not hasattr(os, "sched_setaffinity"):
        return set()
    bus_id = gpu_bus_id(index)
    if bus_id is None:
        return set()
    cpus = cpus_for(bus_id, set(os.sched_getaffinity(0)), sysfs)
    if cpus:
        os.sched_setaffinity(0, cpus)
    return cpus


def pin_worker() -> None:
    """Pin this worker (``LOCAL_RANK``, 0 if unset) to its GPU's NUMA node; a failure (CUDA
    that cannot start, an unreadable sysfs) is one line on stderr, not the job's end."""
    local_rank = os.environ.get("LOCAL_RANK", "0")
    try:
        pin_to_gpu(int(local_rank))
    except Exception as exc:
        print(f"surge: enable_cpu_affinity: local rank {local_rank} left unpinned ({type(exc).__name__}: {exc})",
              file=sys.stderr, flush=True)


BIND_CORES_ENV = "SURGE_BIND_CORES"
"""The deepspeed launcher's ``--bind_cores_to_rank``: the cores to share out ("" for all the
process may use); read by launch/bootstrap.py."""


def share_cores(cores: list[int], local_rank: int, local_world: int) -> list[int]:
    """Local rank ``local_rank``'s equal, contiguous share of ``cores`` (as the deepspeed
    launcher's ``--bind_cores_to_rank``; the remainder is left unused).

    Raises:
        ValueError: fewer cores than processes.
    """
    per = len(cores) // local_world
    if per == 0:
        raise ValueError(f"{len(cores)} cores cannot be shared among {local_world} processes")
    return cores[local_rank * per:(local_rank + 1) * per]


def bind_worker(core_list: str) -> list[int]:
    """Pin this worker to its share of ``core_list`` (a cpulist; "" for every core it may
    use) and size torch's thread pool to it; the cores (empty: nothing changed)."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    cores = sorted(parse_cpulist(core_list) if core_list else os.sched_getaffinity(0))
    mine = share_cores(cores, int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    os.sched_setaffinity(0, mine)
    import torch

    torch.set_num_threads(len(mine))
    return mine


def main(argv: list[str]) -> None:
    """``python -m surge.launch.affinity program [args]``: pin this process as its local
    rank's GPU asks, then become ``program`` (exec: same process, same signals and exit
    code; the mask is inherited). For workers that do not run bootstrap.py: a
    single-process job, ``--no_python`` programs."""
    pin_worker()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
