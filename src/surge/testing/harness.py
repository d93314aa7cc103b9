"""Run checks on several local processes (gloo on CPU) and report per check and rank.

One spawn runs many checks, because starting a process that imports torch costs
seconds on a small machine. Each spawn gets its own temporary directory (``TMPDIR`` and
``tempfile.gettempdir()`` in the children), removed when it ends, so checks may use
``tempfile`` freely without leaving files behind. Each check is a module-level function taking no
arguments; it runs on every rank, in order, inside one process group, and may create
its own Accelerators.

Example (in a pytest module):
    >>> CHECKS = [check_gather, check_ddp_parity]
    >>> test_two_processes = distributed_test(CHECKS, world_size=2)

which spawns once, on the first of the generated tests, and reports each check as its
own pytest test.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

Check = Callable[[], None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_name(check: Check) -> str:
    return f"{check.__module__}.{check.__qualname__}"


@dataclass
class Outcome:
    rank: int
    name: str
    ok: bool
    detail: str = ""
    seconds: float = 0.0


@dataclass
class DistributedReport:
    """What each rank reported for each check."""

    world_size: int
    checks: list[str]
    outcomes: list[Outcome] = field(default_factory=list)
    exitcodes: dict[int, int | None] = field(default_factory=dict)
    timed_out: bool = False

    def failures(self, name: str | None = None) -> list[str]:
        """Human-readable lines for failed or missing (check, rank) pairs."""
        lines = []
        names = [name] if name is not None else self.checks
        for n in names:
            for rank in range(self.world_size):
                got = [o for o in self.outcomes if o.name == n and o.rank == rank]
                if not got:
                    why = "timed out" if self.timed_out else f"exit code {self.exitcodes.get(rank)}"
                    lines.append(f"{n} did not finish on rank {rank} ({why})")
                elif not got[0].ok:
                    lines.append(f"{n} failed on rank {rank}:\n{got[0].detail}")
        return lines

    def assert_passed(self, check: Check | str | None = None) -> None:
        """Raise AssertionError naming every rank on which ``check`` (or any check) failed."""
        name = check if isinstance(check, str) or check is None else check_name(check)
        problems = self.failures(name)
        if problems:
            raise AssertionError("\n\n".join(problems))


def _child(
    rank: int,
    world_size: int,
    port: int,
    checks: Sequence[Check],
    results: mp.Queue[Outcome],
    env: Mapping[str, str],
    pg_timeout_s: float,
    start_group: bool,
) -> None:
    # Only this child's environment changes; the parent's stays as it was.
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            **env,
        }
    )
    tempfile.tempdir = None  # read TMPDIR (set above by the parent) again
    # A spawned child inherits "spawn" as its default start method; a launched process
    # (torchrun, surge launch) has the platform's default (fork on Linux), under which
    # DataLoader workers start in milliseconds instead of importing torch again.
    mp.set_start_method(mp.get_all_start_methods()[0], force=True)
    import torch

    from surge.state import PartialState, destroy_process_group

    torch.set_num_threads(1)
    if start_group:
        # Start the group here with a short timeout, so a check that fails on one rank
        # makes the others fail within seconds instead of hanging for minutes.
        PartialState(cpu=True, timeout=timedelta(seconds=pg_timeout_s))
    for check in checks:
        start = time.perf_counter()
        try:
            check()
            results.put(Outcome(rank, check_name(check), True, seconds=time.perf_counter() - start))
        except BaseException as exc:  # report it and go on with the next check
            detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            results.put(Outcome(rank, check_name(check), False, detail, time.perf_counter() - start))
    destroy_process_group()


def run_distributed(
    checks: Sequence[Check] | Check,
    world_size: int = 2,
    *,
    timeout: float = 300.0,
    pg_timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    start_group: bool = True,
) -> DistributedReport:
    """Spawn ``world_size`` processes that run ``checks`` in order; collect the outcomes.

    Args:
        checks: Module-level functions (they are pickled by reference).
        world_size: Number of processes.
        timeout: Seconds for the whole spawn; processes still running are killed and
            their unfinished checks reported as timed out.
        pg_timeout: Collective timeout inside the children.
        env: Extra environment variables for the children only.
        start_group: Start the process group before the checks (with ``pg_timeout``);
            False lets the first check start it, e.g. to test how it is started.
    """
    if callable(checks):
        checks = [checks]
    checks = list(checks)
    ctx = mp.get_context("spawn")
    results: mp.Queue[Outcome] = ctx.Queue()
    port = free_port()
    scratch = tempfile.mkdtemp(prefix="surge-distributed-")
    child_env = {"TMPDIR": scratch, **(env or {})}
    procs = [
        ctx.Process(
            target=_child,
            args=(rank, world_size, port, checks, results, child_env, pg_timeout, start_group),
            daemon=False,  # checks may start DataLoader workers; we kill stragglers ourselves
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    report = DistributedReport(world_size, [check_name(c) for c in checks])
    expected = world_size * len(checks)
    deadline = time.monotonic() + timeout
    while len(report.outcomes) < expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            report.timed_out = True
            break
        try:
            report.outcomes.append(results.get(timeout=min(remaining, 1.0)))
        except queue.Empty:
            if all(not p.is_alive() for p in procs):
                # Drain what the dead children managed to send.
                while True:
                    try:
                        report.outcomes.append(results.get(timeout=0.5))
                    except queue.Empty:
                        break
                break
    for p in procs:
        p.join(timeout=max(0.0, min(30.0, deadline - time.monotonic())))
        if p.is_alive():
            p.kill()
            p.join()
        report.exitcodes[procs.index(p)] = p.exitcode
    results.close()
    shutil.rmtree(scratch, ignore_errors=True)
    return report


@dataclass
class _Suite:
    """The checks of one :func:`distributed_test` and, once run, their report."""

    checks: list[Check]
    world_size: int
    options: dict[str, object]
    shared: bool = False  # selected in a session that shares spawns (share_spawns)
    report: DistributedReport | None = None


_SUITES: list[_Suite] = []


def share_spawns(items: Sequence[object]) -> None:
    """Let the selected tests made by :func:`distributed_test` share their spawns.

    Call it from a conftest's ``pytest_collection_modifyitems(items)`` hook. The first
    such test to run then spawns once for the checks of every selected one with the same
    world size and options (in collection order), instead of once per test module:
    starting processes that import torch is most of the cost on a small machine. Each
    check is still reported as its own test; a check that breaks its process makes the
    later checks of that spawn fail as not finished.
    """
    for item in items:
        suite = getattr(getattr(item, "function", None), "surge_suite", None)
        if isinstance(suite, _Suite):
            suite.shared = True


def _run_suite(suite: _Suite) -> None:
    batch = [suite]
    if suite.shared:
        batch = [s for s in _SUITES if s.shared and s.report is None and s.world_size == suite.world_size
                 and s.options == suite.options]
    options = dict(suite.options)
    if len(batch) > 1:
        options["timeout"] = sum(float(str(s.options.get("timeout", 300.0))) for s in batch)
    report = run_distributed([c for s in batch for c in s.checks], suite.world_size, **options)  # type: ignore[arg-type]
    for s in batch:
        s.report = report


def distributed_test(checks: Sequence[Check], world_size: int = 2, **kwargs: object) -> Callable[..., None]:
    """A pytest test, parametrized over ``checks``, that spawns once for all of them
    (or once with other modules' checks, see :func:`share_spawns`).

    Assign it to a module-level name starting with ``test_``. Keyword arguments go to
    :func:`run_distributed`.
    """
    import pytest

    suite = _Suite(list(checks), world_size, dict(kwargs))
    _SUITES.append(suite)

    @pytest.mark.parametrize("check", suite.checks, ids=lambda c: c.__name__)
    def test(check: Check) -> None:
        if suite.report is None:
            _run_suite(suite)
        assert suite.report is not None
        suite.report.assert_passed(check)

    test.surge_suite = suite  # type: ignore[attr-defined]
    return test
