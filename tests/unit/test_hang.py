"""The hang report, from records alone (no processes): who waited, who never arrived,
who did not answer; what counts as a collective timeout."""

from __future__ import annotations

import time
import traceback
from datetime import timedelta

import pytest
import torch.distributed as dist

from surge import hang


def record(rank, issued, waiting, collective="", where="train.py:10 in <module>", stack="  File ...\n"):
    return {"rank": rank, "issued": issued, "waiting": waiting, "collective": collective, "where": where,
            "stack": stack}


def test_report_names_waiting_missing_other_and_silent_ranks():
    """Classification by where each rank is, not by collective counts (point-to-point ops
    advance those on some ranks only: rank 4 has issued more and is still waiting)."""
    state = hang._State(rank=0, world_size=6, timeout=timedelta(seconds=30))
    mine = {**record(0, 7, True, "barrier", "train.py:42 in step"), "error": "Timed out waiting 30000ms",
            "reporter": True}
    records = {0: mine, 1: record(1, 7, True, "barrier"), 2: record(2, 6, False, where="data.py:3 in load"),
               4: record(4, 9, True, "barrier"), 5: record(5, 7, True, "broadcast", where="eval.py:8 in sync")}
    summary, report = hang._report(mine, records, state)
    assert summary == ("barrier at train.py:42 in step (collective #7 of the default group) timed out after "
                       "0:00:30 on rank 0: rank 2 never arrived (rank 2 is at data.py:3 in load); rank 5 in another "
                       "collective (rank 5 in broadcast at eval.py:8 in sync); waiting: ranks 0, 1, 4; rank 3 did "
                       "not answer (exited, or stuck in native code)")
    assert report.startswith("surge: collective timeout: " + summary)
    assert "(torch.distributed said: Timed out waiting 30000ms)" in report
    assert "--- rank 2: never arrived (in no collective); issued 6 collectives; Python stack" in report
    assert "--- rank 1: waiting in barrier; issued 7 collectives;" in report and "--- rank 3" not in report


def test_collective_is_read_from_the_stack():
    dist_file = "/x/site-packages/torch/distributed/distributed_c10d.py"
    wrapper = "/x/site-packages/torch/distributed/c10d_logger.py"
    assert hang._collective_in(["train.py", wrapper, dist_file], ["main", "wrapper", "barrier"]) == "barrier"
    assert hang._collective_in(["train.py", "/x/site-packages/torch/autograd/graph.py"],
                               ["main", "_engine_run_backward"]) == "the gradient all-reduce of backward()"
    assert hang._collective_in(["train.py"], ["main"]) is None


def _raise_in(name):
    """A RuntimeError whose traceback passes through a function of torch.distributed."""
    code = compile(f"def {name}():\n    raise RuntimeError('Timed out waiting 5000ms for recv operation')\n",
                   dist.distributed_c10d.__file__, "exec")
    scope = {}
    exec(code, scope)
    try:
        scope[name]()
    except RuntimeError as exc:
        return exc


def test_what_counts_as_a_collective_timeout():
    assert hang.is_timeout(_raise_in("all_reduce"))
    assert hang._collective_of(_raise_in("broadcast").__traceback__) == "broadcast"
    assert not hang.is_timeout(RuntimeError("Timed out waiting"))  # not from torch.distributed
    assert not hang.is_timeout(ValueError("timeout"))
    assert not hang.is_timeout(hang.CollectiveTimeout("timed out"))
    assert hang.is_timeout(dist.DistStoreError("wait timeout after 5000ms"))


def test_explain_is_inert_without_a_process_group():
    assert hang.explain(_raise_in("all_reduce")) is None


@pytest.mark.parametrize("seconds, grace", [(4, 20), (30, 30), (600, 60), (None, 60)])
def test_a_rank_that_never_arrived_stops_itself_after_a_bounded_grace(seconds, grace):
    assert hang._grace(timedelta(seconds=seconds) if seconds is not None else None) == grace


def test_stacks_start_at_the_users_code():
    frames = traceback.StackSummary.from_list([("<frozen runpy>", 1, "_run_code", ""),
                                               (hang.__file__, 5, "main", ""), ("/home/me/train.py", 9, "<module>", ""),
                                               (dist.distributed_c10d.__file__, 3, "barrier", "")])
    assert hang._format(list(frames)).splitlines()[0] == '  File "/home/me/train.py", line 9, in <module>'
    assert hang._where(list(frames)) == "train.py:9 in <module>"


def test_the_listener_thread_is_joined_when_the_group_goes(monkeypatch):
    """[Note: no thread in a store call at exit]: uninstall (run at exit and before a group
    is destroyed) stops and joins the thread, so no daemon thread is inside a C++ store
    call while the interpreter finalises (that aborted a finished job with SIGABRT)."""
    calls = []

    class Store:
        def clone(self):
            return self

        def check(self, keys):
            calls.append(keys)
            return False

    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", Store)
    monkeypatch.setattr(hang, "_POLL_S", 0.01)
    monkeypatch.setattr(hang, "_hooked", True)  # leave sys.excepthook and atexit alone
    hang.install(0, 2, None)
    thread = hang._state.thread
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls and thread.is_alive()
    hang.uninstall()
    assert not thread.is_alive() and hang._state is None
    hang.uninstall()  # twice is harmless
