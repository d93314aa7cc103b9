"""``surge doctor``: a static check of a training script for common mistakes.

The script is read with :mod:`ast` (never run, never imported); each finding names a rule
of :data:`surge.doctor.rules.RULES`, the one table the checker, the ``--json`` output and
docs/mistakes.md are made from. No torch.
"""

from surge.doctor.check import DoctorError, Finding, Settings, check_file, check_source, read_settings
from surge.doctor.rules import RULES, Rule

__all__ = ["RULES", "DoctorError", "Finding", "Rule", "Settings", "check_file", "check_source", "read_settings"]
