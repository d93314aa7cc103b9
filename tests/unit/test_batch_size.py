"""find_executable_batch_size: halves on out-of-memory, retries, gives up at zero."""

import pytest
import torch

from surge.utils import find_executable_batch_size, should_reduce_batch_size


def test_halves_until_it_fits():
    tried = []

    @find_executable_batch_size(starting_batch_size=128)
    def train(batch_size, scale, *, offset=0):
        tried.append(batch_size)
        if batch_size > 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch_size * scale + offset

    assert train(2, offset=1) == 33
    assert tried == [128, 64, 32, 16]


def test_cpu_allocator_message_counts_as_out_of_memory():
    calls = []

    @find_executable_batch_size(starting_batch_size=4)
    def train(batch_size):
        calls.append(batch_size)
        if batch_size == 4:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 1099511627776 bytes.")
        return batch_size

    assert train() == 2 and calls == [4, 2]


def test_gives_up_at_zero_and_other_errors_pass_through():
    @find_executable_batch_size(starting_batch_size=3)
    def always(batch_size):
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(RuntimeError, match="reached zero"):
        always()

    @find_executable_batch_size
    def broken(batch_size):
        raise ValueError("a real bug")

    with pytest.raises(ValueError, match="a real bug"):
        broken()
    assert not should_reduce_batch_size(RuntimeError("shape mismatch"))


def test_signature_errors():
    with pytest.raises(TypeError, match="must take `batch_size` as its first argument"):
        find_executable_batch_size(lambda x: x)

    @find_executable_batch_size(starting_batch_size=8)
    def train(batch_size, model):
        return batch_size

    with pytest.raises(TypeError, match="call train\\(\\) without batch_size"):
        train(8, "model")
    with pytest.raises(ValueError, match="starting_batch_size=0"):
        find_executable_batch_size(starting_batch_size=0)(train)
