"""``get_logger``: a standard ``logging`` logger that speaks once per job, not once per
process (the names of ``accelerate.logging``).

    from surge.logging import get_logger
    logger = get_logger(__name__, log_level="INFO")
    logger.info("starting")                            # main process only
    logger.info("my shard has %d rows", n, main_process_only=False)  # every process
    logger.info("in rank order", main_process_only=False, in_order=True)

Records from other processes than the main one carry a ``[rank N]`` prefix. Works
before any process group exists (the rank comes from the launcher's environment).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    _Adapter: TypeAlias = logging.LoggerAdapter[logging.Logger]
else:  # LoggerAdapter is subscriptable from Python 3.11 only
    _Adapter = logging.LoggerAdapter


def _rank() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    from surge.config.environment import current_launch_environment, rank_variable

    try:
        env = current_launch_environment()
    except ValueError:  # an inconsistent launcher environment: logging must still work
        return rank_variable(), 2

    return env.rank, env.world_size


class MultiProcessAdapter(_Adapter):
    """A ``LoggerAdapter`` whose calls take ``main_process_only=True`` and ``in_order=False``.

    ``in_order=True`` (with ``main_process_only=False``) logs from every process one
    after the other, rank 0 first, with a barrier between: every process must call it.
    """

    # The base class's **kwargs accept any keyword of any type; these two are bools, which
    # mypy counts as a narrower signature.
    def log(self, level: int, msg: Any, *args: Any, main_process_only: bool = True,  # type: ignore[override]
            in_order: bool = False, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        rank, world = _rank()
        if main_process_only:
            if rank == 0:
                self.logger.log(level, msg, *args, **kwargs)
            return
        prefix = f"[rank {rank}] " if world > 1 else ""
        if not in_order or world == 1:
            # The prefix joins the caller's format string; logging still applies the args.
            self.logger.log(level, prefix + str(msg), *args, **kwargs)  # noqa: G003
            return
        import torch.distributed as dist

        for turn in range(world):
            if turn == rank:
                self.logger.log(level, prefix + str(msg), *args, **kwargs)  # noqa: G003 (as above)
            dist.barrier()

    # LoggerAdapter's shortcuts (info, warning, ...) all end in self.log; these make sure
    # the extra keywords reach it.
    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kwargs)

    def critical(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(logging.CRITICAL, msg, *args, **kwargs)

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, exc_info=exc_info, **kwargs)


def get_logger(name: str, log_level: str | int | None = None) -> MultiProcessAdapter:
    """The logger ``name`` wrapped so it logs on the main process unless asked otherwise.

    ``log_level`` (or the ``SURGE_LOG_LEVEL`` environment variable) sets the logger's
    level. Configure handlers as usual (e.g. ``logging.basicConfig``).

    Raises:
        ValueError: an unknown level name.
    """
    from surge.config.environment import log_level_variable

    logger = logging.getLogger(name)
    level = log_level if log_level is not None else log_level_variable()
    if level is not None:
        if isinstance(level, str):
            resolved = logging.getLevelName(level.upper())
            if not isinstance(resolved, int):
                raise ValueError(f"log_level={level!r} is not a logging level; use DEBUG, INFO, WARNING, ERROR or "
                                 "CRITICAL.")
            level = resolved
        logger.setLevel(level)
        logger.root.setLevel(level)
    return MultiProcessAdapter(logger, {})


__all__ = ["MultiProcessAdapter", "get_logger"]
