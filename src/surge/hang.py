"""Hang diagnosis: when a collective times out, say which ranks waited in which
collective, which rank never arrived, and where every rank's Python code was.

[Note: how a hang is diagnosed]
Every collective of the default group runs with the job's timeout
(``collective_timeout`` in the config, ``InitProcessGroupKwargs(timeout=)``; 10 minutes
by default), so a rank waiting for a peer that never comes gets an error instead of
waiting forever. On its own that error only says "timed out waiting for recv". surge
turns it into a diagnosis, with nothing added to the collectives themselves:

- When surge starts the process group it opens a second connection to the job's store
  for a daemon thread that checks a request key four times a second (one ~30 us request;
  a thread blocked in ``store.wait`` could not be interrupted when the job ends).
- The rank whose collective timed out (on gloo the error reaches Python in the calling
  thread) writes a record to the store: the collective (the innermost
  ``torch.distributed`` function of the traceback, or DDP's gradient all-reduce), the
  group's collective count, its own stack. Then it sets the request key.
- Every other rank's thread sees it and answers with its record: how many collectives
  it issued and its main thread's stack (``sys._current_frames``; a rank stuck in C
  code releases the GIL, so its stack can still be read).
- A rank whose main thread is in no collective never arrived (the collective counts are
  shown, not compared: point-to-point ops and other groups advance them on some ranks
  only). The lowest timed-out rank prints one report with every rank's stack; each
  waiting rank raises :class:`CollectiveTimeout` naming the collective and the missing
  ranks, which ``surge launch`` prints as the cause.
- A rank that never arrived stops too: the launcher's agent terminates it once a
  waiting rank has failed; without one (an MPI/Slurm launch that does not), its thread
  ends the process after a grace period. Nobody waits forever.

On NCCL the watchdog thread, not the caller, sees the timeout and aborts the process;
surge enables torch's desync report (names the rank that did not join) and flight
recorder dump for it (``TORCH_NCCL_DESYNC_DEBUG``, ``TORCH_NCCL_TRACE_BUFFER_SIZE``,
``TORCH_NCCL_DUMP_ON_TIMEOUT``, unless set) and ``faulthandler``, which prints every
thread's Python stack when the process is aborted or crashes.
"""

from __future__ import annotations

import atexit
import faulthandler
import json
import os
import sys
import sysconfig
import threading
import time
import traceback
from datetime import timedelta
from types import TracebackType
from typing import Any

_PREFIX = "surge/hang/"
_REQUEST = _PREFIX + "request"
_TIMEOUT_WORDS = ("timed out", "timeout")
_ANY = "a collective"
_DONE = _PREFIX + "done"
_POLL_S = 0.25  # the threads' look at the request key (one ~30 us store request)
_GATHER_S = 15.0  # the longest the diagnosing rank waits for the others' answers
# What an error says when a peer vanished mid-collective (a consequence, not a cause);
# the launcher ranks such failures last too.
PEER_LOST = ("closed by peer", "reset by peer", "remote worker", "connection refused", "broken pipe")


class CollectiveTimeout(RuntimeError):
    """A collective did not complete within the job's timeout; the message names the
    collective, the ranks that waited in it and the ranks that never arrived."""


class _State:
    def __init__(self, rank: int, world_size: int, timeout: timedelta | None) -> None:
        self.rank, self.world_size, self.timeout = rank, world_size, timeout
        self.diagnosing = False  # this rank's main thread is reporting its own timeout
        self.main = threading.main_thread()
        self.lock = threading.Lock()  # orders the thread's answer and the main thread's own record
        self.store_id = 0  # which default store the thread listens to
        self.thread: threading.Thread = threading.Thread()
        self.stop = threading.Event()  # set when the group goes: the thread returns at its next look


_state: _State | None = None
_hooked = False  # sys.excepthook chains to explain() (installed once per process)


def nccl_environment() -> None:
    """Before an NCCL group starts: torch's desync report and flight recorder dump on a
    timeout, unless the user chose otherwise."""
    from surge.config.environment import set_nccl_debug_defaults

    set_nccl_debug_defaults()


def install(rank: int, world_size: int, timeout: timedelta | None) -> None:
    """Arm the diagnosis for the default group that is running (again for each new group)."""
    global _state, _hooked
    if not faulthandler.is_enabled():
        faulthandler.enable()  # fatal signals (NCCL's abort, a crash) print every thread's stack
    import torch.distributed as dist

    try:
        store = dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return
    if _state is not None and _state.store_id == id(store) and _state.thread.is_alive():
        _state.rank, _state.world_size, _state.timeout = rank, world_size, timeout
        return
    try:
        # Its own connection: the thread never contends with training's store use. (Store.clone
        # exists, but torch's stubs omit it.)
        listener = store.clone()  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError, ValueError):
        return  # a store without clone(): the plain timeout error stays
    uninstall()  # a thread of an earlier group ends first
    state = _State(rank, world_size, timeout)
    state.store_id = id(store)
    state.thread = threading.Thread(target=_answer, args=(listener, state), name="surge-hang-diagnosis", daemon=True)
    _state = state
    state.thread.start()
    if not _hooked:
        _hooked = True
        atexit.register(uninstall)  # [Note: no thread in a store call at exit]
        previous = sys.excepthook

        def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
            if explain(exc) is None:  # prints the report; the traceback follows as usual
                await_report(exc)
            previous(kind, exc, tb)

        sys.excepthook = excepthook


def uninstall() -> None:
    """Forget the group (it is being destroyed) and wait for the thread to end.

    [Note: no thread in a store call at exit]
    The thread's store request releases the GIL inside C++ (pybind11). A daemon thread
    that takes the GIL back while the interpreter is finalising is ended by
    ``pthread_exit``, whose unwinding through pybind11's noexcept destructor aborts the
    process ("terminate called without an active exception", SIGABRT) after the script
    already finished. So the thread is stopped and joined here, while Python is alive:
    at exit (process_group's teardown, and an atexit hook of our own), and before a
    group is destroyed.
    """
    global _state
    state, _state = _state, None
    if state is None:
        return
    state.stop.set()
    if state.thread.is_alive() and state.thread is not threading.current_thread():
        state.thread.join(timeout=_POLL_S + 5.0)  # one store request at most (its own timeout bounds it)


def is_timeout(exc: BaseException) -> bool:
    """A timeout raised by torch.distributed: a collective's (its traceback passes
    through torch.distributed or DDP's backward) or the store's."""
    if not isinstance(exc, RuntimeError) or isinstance(exc, CollectiveTimeout):
        return False
    if not any(w in str(exc).lower() for w in _TIMEOUT_WORDS):
        return False
    import torch.distributed as dist

    return isinstance(exc, dist.DistError) or _collective_of(exc.__traceback__) != _ANY


def explain(exc: BaseException) -> CollectiveTimeout | None:
    """If ``exc`` is a collective timeout of the default group: gather every rank's
    state, print the report and return the error to raise instead (None otherwise)."""
    state = _state
    if state is None or state.diagnosing or not is_timeout(exc):
        return None
    with state.lock:  # the thread either answered already or will not answer for this rank
        state.diagnosing = True
    print(f"surge: rank {state.rank}: a collective timed out; asking every rank where it is", file=sys.stderr,
          flush=True)
    try:
        return _diagnose(state, exc)
    except Exception as failure:  # the store itself is gone: keep the original error
        print(f"surge: rank {state.rank}: could not gather the other ranks' state ({failure})", file=sys.stderr)
        return None


def _diagnose(state: _State, exc: BaseException) -> CollectiveTimeout:
    collective = _collective_of(exc.__traceback__)
    if collective == _ANY and type(exc).__name__ == "DistStoreError":
        collective = "a wait on the job's store"
    frames = traceback.extract_tb(exc.__traceback__)
    mine = {"rank": state.rank, "issued": _issued(), "collective": collective, "where": _where(frames),
            "stack": _format(frames), "waiting": True, "reporter": True,
            "error": str(exc).strip().splitlines()[0][:300]}
    import torch.distributed as dist

    store = dist.distributed_c10d._get_default_store()
    store.set(f"{_PREFIX}rank_{state.rank}", json.dumps(mine))
    store.add(_REQUEST, 1)
    keys = [f"{_PREFIX}rank_{r}" for r in range(state.world_size)]
    wait = state.timeout.total_seconds() if state.timeout is not None else _GATHER_S
    deadline = time.monotonic() + min(_GATHER_S, max(3.0, wait))
    records: dict[int, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for r in range(state.world_size):
            if r not in records and store.check([keys[r]]):
                records[r] = json.loads(store.get(keys[r]))
        if len(records) == state.world_size:
            break
        time.sleep(0.1)
    records[state.rank] = mine  # this rank's own view, whatever its thread wrote
    summary, report = _report(mine, records, state)
    printer = min(r for r, rec in records.items() if rec.get("reporter"))
    if state.rank == printer:
        print(report, file=sys.stderr, flush=True)
        store.set(_DONE, "1")
    else:
        print(f"surge: rank {state.rank}: {summary} (rank {printer} printed the report)", file=sys.stderr,
              flush=True)
    return CollectiveTimeout(summary)


def await_report(exc: BaseException) -> None:
    """A rank failing because a peer vanished (the diagnosing rank's timeout closes its
    links) waits, bounded, for the report to be printed before it exits: its exit would
    make the launcher stop the reporting rank midway."""
    state = _state
    if state is None or state.diagnosing or not isinstance(exc, RuntimeError):
        return
    if not any(p in str(exc).lower() for p in PEER_LOST):
        return
    try:
        import torch.distributed as dist

        store = dist.distributed_c10d._get_default_store()
        if not store.check([_REQUEST]):
            return
        deadline = time.monotonic() + _GATHER_S + 5
        while time.monotonic() < deadline and not store.check([_DONE]):
            time.sleep(0.1)
    except Exception:
        return


def _report(mine: dict[str, Any], records: dict[int, dict[str, Any]], state: _State) -> tuple[str, str]:
    """Who waited (in a collective) and who never arrived (not in any collective).

    Collective counts are shown, not used to classify: point-to-point ops and other
    groups advance them on some ranks only."""
    waiting = sorted(r for r, rec in records.items() if rec["waiting"] and rec["collective"] == mine["collective"])
    missing = sorted(r for r, rec in records.items() if not rec["waiting"])
    other = sorted(r for r in records if r not in waiting and r not in missing)
    silent = sorted(set(range(state.world_size)) - set(records))
    what = f"{mine['collective']} at {mine['where']} (collective #{mine['issued']} of the default group)"
    parts = [f"waiting: {_ranks(waiting)}"]
    if other:
        first = records[other[0]]
        parts.insert(0, f"{_ranks(other)} in another collective ({_ranks(other[:1])} in {first['collective']} at "
                        f"{first['where']})")
    if missing:
        parts.insert(0, f"{_ranks(missing)} never arrived ({_ranks(missing[:1])} is at {records[missing[0]]['where']})")
    if silent:
        parts.append(f"{_ranks(silent)} did not answer (exited, or stuck in native code)")
    after = f" after {state.timeout}" if state.timeout is not None else ""
    summary = f"{what} timed out{after} on rank {mine['rank']}: " + "; ".join(parts)
    lines = [f"surge: collective timeout: {summary}", f"(torch.distributed said: {mine['error']})"]
    for r in sorted(records):
        rec = records[r]
        status = f"waiting in {rec['collective']}" if rec["waiting"] else "never arrived (in no collective)"
        lines.append(f"--- rank {r}: {status}; issued {_count(rec['issued'])}; Python stack (most recent call last):")
        lines.append(rec["stack"].rstrip())
    lines.append("--- end of the collective timeout report")
    return summary, "\n".join(lines)


def _count(issued: int) -> str:
    return f"{issued} collective{'' if issued == 1 else 's'}"


def _ranks(ranks: list[int]) -> str:
    if not ranks:
        return "no rank"
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def _answer(listener: Any, state: _State) -> None:
    """The daemon thread: look for a diagnosis request four times a second (one small
    store request; a blocking wait could not be interrupted when the job ends), answer it,
    then make sure this process does not outlive the job."""
    while True:
        if state.stop.wait(_POLL_S):
            return  # the group is being destroyed (see [Note: no thread in a store call at exit])
        if _state is not state or sys.is_finalizing():
            return  # the group was destroyed or replaced
        try:
            if listener.check([_REQUEST]):
                break
        except Exception:
            return  # the store is gone: the job is over
    with state.lock:
        if state.diagnosing:
            return
        ident = state.main.ident  # None only for a thread that never started
        frame = sys._current_frames().get(ident) if ident is not None else None
        frames = traceback.extract_stack(frame) if frame is not None else []
        waiting_in = _collective_in([f.filename for f in frames], [f.name for f in frames])
        record = {"rank": state.rank, "issued": _issued(), "collective": waiting_in or "", "where": _where(frames),
                  "stack": _format(frames), "waiting": waiting_in is not None}
        try:
            listener.set(f"{_PREFIX}rank_{state.rank}", json.dumps(record))
        except Exception:
            return
    grace = _grace(state.timeout)
    if state.stop.wait(grace):
        return
    if _state is state and not state.diagnosing:
        print(f"surge: rank {state.rank} stops: another rank reported a collective timeout (see its report) and "
              f"nothing stopped this process within {grace:.0f} s", file=sys.stderr, flush=True)
        os._exit(1)


def _grace(timeout: timedelta | None) -> float:
    """How long a rank that never arrived waits to be stopped by its launcher before it
    stops itself: the timeout, from 20 s (past the report's gathering) to 60 s."""
    return min(60.0, max(_GATHER_S + 5, timeout.total_seconds() if timeout is not None else 60.0))


def _issued() -> int:
    import torch.distributed as dist

    try:
        group = dist.distributed_c10d._get_default_group()
        # A ProcessGroup method that torch's stubs omit (they list only its _set_ twin).
        return int(group._get_sequence_number_for_group())  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError, ValueError):
        return -1


_TORCH_DIST = os.sep + os.path.join("torch", "distributed") + os.sep
_AUTOGRAD = os.sep + os.path.join("torch", "autograd") + os.sep
_WRAPPERS = {"wrapper", "_fn", "inner"}


def _collective_in(filenames: list[str], names: list[str]) -> str | None:
    """The collective a stack is in: the innermost torch.distributed function (outside
    decorator wrappers), "the gradient all-reduce of backward()" inside autograd, or None."""
    for filename, name in zip(reversed(filenames), reversed(names), strict=True):
        if _TORCH_DIST in filename and name not in _WRAPPERS and not name.startswith("_"):
            return name
    if any(_AUTOGRAD in f for f in filenames):
        return "the gradient all-reduce of backward()"
    return None


def _format(frames: list[traceback.FrameSummary], limit: int = 16) -> str:
    """A stack from the user's first frame on (the launcher's frames before it say
    nothing), at most ``limit`` innermost frames."""
    start = next((i for i, f in enumerate(frames) if _is_user(f)), 0)
    return "".join(traceback.format_list(frames[start:][-limit:]))


def _collective_of(tb: TracebackType | None) -> str:
    frames = traceback.extract_tb(tb)
    return _collective_in([f.filename for f in frames], [f.name for f in frames]) or _ANY


_LIBRARY_DIRS = tuple(os.path.normpath(p) + os.sep for p in {
    *(sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")), os.path.dirname(os.path.abspath(__file__))})


def _is_user(f: traceback.FrameSummary) -> bool:
    return not f.filename.startswith("<") and not os.path.abspath(f.filename).startswith(_LIBRARY_DIRS)


def _where(frames: list[traceback.FrameSummary]) -> str:
    """The innermost frame of the user's own code, as ``file:line in function``."""
    for f in reversed(frames):
        if _is_user(f):
            return f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}"
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"

