"""How ``surge launch``'s agents meet, and where they listen.

[Note: surge's rendezvous]
torch's "static" rendezvous has two flaws surge cannot live with:

- Its TCPStore listens on every network interface whatever address it is given, so a
  single-machine job would accept connections from the network.
- It hands the workers the same store in every round, so after a restart
  (``--max_restarts``) the new workers read the dead workers' keys (gloo connects to a
  peer's old address and fails).

This handler is "static" with both fixed. Machine 0 listens on one address only: the
loopback for a single-machine job, ``main_process_ip`` for a multi-machine one (the
socket is bound by surge and handed to the TCPStore). Every round (the first start and
each restart) gets a prefix of its own in the agents' store and a fresh store, on a free
port of the same address, for its workers; machine 0 publishes that port to the others.
Machines enter each round together: one whose workers failed waits in the next round,
and the agents of the others see it through ``num_nodes_waiting`` and restart theirs.
It is registered under the name "surge" with torch's rendezvous registry, so the elastic
agent drives it like any other.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
from typing import Any

from torch.distributed.elastic.rendezvous import RendezvousHandler  # imported by the launcher only

BACKEND = "surge"


def _listen(address: str, port: int) -> tuple[int, int]:
    """A listening socket bound to ``address:port`` (port 0: a free one), as (fd, port).

    Raises:
        OSError: the address is not one of this machine's, or the port is taken.
    """
    infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(1024)
        bound = sock.getsockname()[1]
    except OSError:
        sock.close()
        raise
    return sock.detach(), bound  # the store's server owns the descriptor from now on


def _check_reachable(address: str, machines: int) -> None:
    """A multi-machine job's machine 0 must not listen on a loopback address its host
    name happens to resolve to (Debian's /etc/hosts maps it to 127.0.1.1).

    Raises:
        OSError: ``address`` is a host name that resolves to loopback here.
    """
    import ipaddress

    if machines == 1:
        return
    try:
        ipaddress.ip_address(address)
        return  # an address given literally is taken as meant
    except ValueError:
        pass
    resolved = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)[0][4][0]
    if ipaddress.ip_address(resolved).is_loopback:
        raise OSError(f"main_process_ip {address!r} resolves to {resolved} on machine 0, a loopback address the "
                      "other machines cannot reach; give machine 0's IP address")


def serve_store(address: str, port: int, *, world_size: int | None, timeout: datetime.timedelta,
                wait_for_workers: bool = False) -> Any:
    """A TCPStore server listening on ``address`` only (torch's own binds every interface)."""
    from torch.distributed import TCPStore  # type: ignore[attr-defined]  # public, but torch's __init__ has no __all__

    fd, bound = _listen(address, port)
    return TCPStore(address, bound, world_size, True, timeout=timeout, wait_for_workers=wait_for_workers,
                    multi_tenant=True, master_listen_fd=fd, use_libuv=True)


def _create(params: Any) -> Any:
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

    address, port = parse_rendezvous_endpoint(params.endpoint, default_port=29500)
    return SurgeRendezvous(address, port, rank=int(params.config["rank"]), world_size=params.max_nodes,
                           run_id=params.run_id, timeout=int(params.config.get("timeout", 900)))


def register() -> None:
    """Make ``rdzv_backend="surge"`` known to torch's elastic launcher (idempotent)."""
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry as registry

    with contextlib.suppress(ValueError):  # already registered (a second launch in this process)
        registry.register(BACKEND, _create)


class SurgeRendezvous(RendezvousHandler):
    """See [Note: surge's rendezvous]. ``rank``/``world_size`` count machines."""

    def __init__(self, address: str, port: int, *, rank: int, world_size: int, run_id: str, timeout: int) -> None:
        self.address, self.port = address, port
        self.rank, self.world_size, self.run_id = rank, world_size, run_id
        self.timeout = datetime.timedelta(seconds=timeout)
        self._store: Any = None  # the agents' store (machine 0 serves it)
        self._worker_store: Any = None  # this round's store for the workers (machine 0)
        self._round = 0

    def get_backend(self) -> str:
        return BACKEND

    @property
    def use_agent_store(self) -> bool:
        return True  # workers connect to the store in bootstrap_store_info as clients

    def next_rendezvous(self) -> Any:
        from torch.distributed import DistError
        from torch.distributed.elastic.rendezvous import RendezvousError

        try:
            return self._next_round()
        except OSError as exc:  # the port is taken, or the address is not this machine's
            raise RendezvousError(f"cannot listen on {self.address}:{self.port}: {exc.strerror or exc}") from None
        except DistError as exc:  # machines that never joined, machine 0 unreachable
            detail = " ".join(str(exc).split())[:200]
            raise RendezvousError(f"the {self.world_size} machines did not all meet within "
                                  f"{self.timeout.total_seconds():.0f} s ({detail})") from None

    def _next_round(self) -> Any:
        from torch.distributed import PrefixStore, TCPStore  # type: ignore[attr-defined]  # as in serve_store
        from torch.distributed.elastic.rendezvous.api import RendezvousInfo, RendezvousStoreInfo

        if self._store is None:
            if self.rank == 0:
                _check_reachable(self.address, self.world_size)
                self._store = serve_store(self.address, self.port, world_size=self.world_size, timeout=self.timeout,
                                          wait_for_workers=True)
                self.port = self._store.port
            else:
                self._store = TCPStore(self.address, self.port, self.world_size, False, timeout=self.timeout)
        round_ = self._round
        self._round += 1
        store = PrefixStore(f"{self.run_id}/round_{round_}", self._store)
        # Every machine enters the round before any goes on: a machine whose own workers
        # are healthy learns of the round through num_nodes_waiting() and restarts too.
        if self._store.add(self._arrivals(round_), 1) == self.world_size:
            store.set("complete", "1")
        store.wait(["complete"])
        if self.rank == 0:
            self._worker_store = None  # the previous round's workers are gone
            self._worker_store = serve_store(self.address, 0, world_size=None, timeout=self.timeout)
            worker_port = self._worker_store.port
            store.set("worker_store_port", str(worker_port))
        else:
            worker_port = int(store.get("worker_store_port"))
        return RendezvousInfo(store, self.rank, self.world_size, RendezvousStoreInfo(self.address, worker_port))

    def _arrivals(self, round_: int) -> str:
        return f"{self.run_id}/round_{round_}/arrived"

    def is_closed(self) -> bool:
        return False

    def set_closed(self) -> None:
        pass

    def num_nodes_waiting(self) -> int:
        """Machines already waiting in the next round (their workers failed): the agent
        of a healthy machine then restarts its workers as well."""
        if self._store is None or self.world_size == 1:
            return 0
        try:
            return int(self._store.add(self._arrivals(self._round), 0))
        except Exception:  # machine 0's store is gone: the job is ending
            return 0

    def get_run_id(self) -> str:
        return self.run_id

    def shutdown(self) -> bool:
        self._worker_store = None
        return True
