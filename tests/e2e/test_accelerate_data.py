"""Differential test of data order: the same loops under surge and under HF Accelerate,
on 2 processes, must give every rank the same samples in every epoch and leave the
random streams where Accelerate leaves them (the compatibility policy in SPEC.md)."""

import os

import pytest

from e2e_util import ROOT, launch_compare

pytestmark = pytest.mark.e2e
SCRIPT = os.path.join(ROOT, "tests", "e2e", "scripts", "data_compare.py")


def _launch(lib: str, *args: str) -> dict:
    return launch_compare(SCRIPT, lib, *args)


def test_every_rank_gets_accelerates_samples_and_random_draws():
    """Shuffling (seeded, unseeded per rank, with a generator), a BatchSampler passed as
    sampler, a custom batch sampler, split/even/uneven batches, drop_last, iterable
    datasets (dispatched and sharded), dispatch_batches and the seedable sampler: each
    rank's indices per epoch and the draws after the loops are Accelerate's."""
    pytest.importorskip("accelerate")
    ours, theirs = _launch("surge"), _launch("accelerate")
    assert set(ours) == set(theirs) and len(ours) == 14
    for case in ours:
        assert ours[case] == theirs[case], (case, ours[case], theirs[case])
    # A few facts behind the equality, so a change in both libraries is noticed too.
    even = ours["even_batches"]["epochs"]
    assert even[1][0] == [[4, 5, 6, 7], [2, 3, 4, 5]]  # the last batch filled to full size from the start
    ranks = ours["batch_sampler_as_sampler"]["epochs"]
    for epoch in range(2):  # one permutation shared by both ranks: every sample seen (2 repeated as padding)
        seen = [i for rank in ranks for batch in rank[epoch] for i in batch]
        assert set(seen) == set(range(22)) and len(seen) == 24
