"""``find_executable_batch_size``: retry a training function with half the batch size
whenever it runs out of memory (the name and behaviour of ``accelerate.utils``)."""

from __future__ import annotations

import functools
import gc
import inspect
from collections.abc import Callable
from typing import Any

# Messages of out-of-memory errors that do not arrive as torch.OutOfMemoryError.
_OOM_MESSAGES = (
    "out of memory",  # CUDA, XPU, HIP
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_NOT_SUPPORTED.",  # cuDNN's answer to a too-large batch
    "DefaultCPUAllocator: can't allocate memory",
    "DefaultCPUAllocator: not enough memory",
    "MPS backend out of memory",
)


def should_reduce_batch_size(exception: BaseException) -> bool:
    """Whether ``exception`` means "out of memory" (so a smaller batch may fit)."""
    import torch

    if isinstance(exception, torch.OutOfMemoryError):
        return True
    if isinstance(exception, RuntimeError) and len(exception.args) == 1 and isinstance(exception.args[0], str):
        return any(message in exception.args[0] for message in _OOM_MESSAGES)
    return False


def release_memory(*objects: Any) -> list[None]:
    """Free memory: drop ``objects`` (returns a list of as many Nones, for
    ``model, optimizer = release_memory(model, optimizer)``, as Accelerate's), collect
    Python garbage, then empty the device caches."""
    freed: list[None] = [None] * len(objects)
    del objects
    clear_device_cache(garbage_collection=True)
    return freed


def clear_device_cache(garbage_collection: bool = False) -> None:
    """Empty the caching allocators of the devices torch has (after collecting Python
    garbage when ``garbage_collection``)."""
    import torch

    if garbage_collection:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if hasattr(torch, "mps") and torch.backends.mps.is_available():
        torch.mps.empty_cache()
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        torch.xpu.empty_cache()


def find_executable_batch_size(function: Callable[..., Any] | None = None, starting_batch_size: int = 128,
                               reduce_batch_size_on_oom: bool = True) -> Any:
    """Decorate ``function(batch_size, *args, **kwargs)``: call it with
    ``starting_batch_size`` and, each time it runs out of memory, free memory, halve the
    batch size and call it again. Call the decorated function without ``batch_size``.

    Build everything whose size depends on the batch (the DataLoader, usually the
    prepared objects) inside the function, so each retry starts clean. Under several
    processes every process should fail together (the same batch on the same model); a
    process that runs out of memory alone leaves the others waiting in a collective.

    Example:
        >>> @find_executable_batch_size(starting_batch_size=256)
        ... def train(batch_size, model, data):
        ...     loader = DataLoader(data, batch_size=batch_size)
        ...     ...
        >>> train(model, data)

    Raises:
        TypeError: ``function`` does not take ``batch_size`` first, or it was passed.
        RuntimeError: no batch size down to 1 fits ("reached zero").
    """
    if function is None:
        return functools.partial(find_executable_batch_size, starting_batch_size=starting_batch_size,
                                 reduce_batch_size_on_oom=reduce_batch_size_on_oom)
    if isinstance(starting_batch_size, bool) or not isinstance(starting_batch_size, int) or starting_batch_size < 1:
        raise ValueError(f"starting_batch_size={starting_batch_size!r} must be a positive int.")
    signature = inspect.signature(function).parameters
    params = list(signature)
    fixed = not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in signature.values())
    if not params or params[0] != "batch_size":
        raise TypeError(f"find_executable_batch_size: {function.__name__}() must take `batch_size` as its first "
                        f"argument (it takes {params}).")

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        if "batch_size" in kwargs or (fixed and len(args) >= len(params)):
            raise TypeError(f"call {function.__name__}() without batch_size: find_executable_batch_size passes it "
                            f"(starting at {starting_batch_size}).")
        batch_size = starting_batch_size
        while True:
            if batch_size == 0:
                raise RuntimeError(f"find_executable_batch_size: no executable batch size found for "
                                   f"{function.__name__}(), reached zero (every size from {starting_batch_size} "
                                   "down to 1 ran out of memory).")
            try:
                return function(batch_size, *args, **kwargs)
            except Exception as exc:
                if not (reduce_batch_size_on_oom and should_reduce_batch_size(exc)):
                    raise
                del exc
                release_memory()
                batch_size //= 2

    return run
