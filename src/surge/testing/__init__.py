"""Testing helpers: the multi-process harness used by surge's own tests (and usable
by yours)."""

from surge.testing.harness import DistributedReport, distributed_test, free_port, run_distributed

__all__ = ["DistributedReport", "distributed_test", "free_port", "run_distributed"]
