"""Automatic checkpoint names: ``project_dir/checkpoints/checkpoint_<n>``.

Numbers only grow: a new run in a directory that already holds checkpoints continues
after the highest one, ``load_state()`` continues after the one it loaded, and
``total_limit`` removes the oldest complete checkpoints only once a newer one is
complete. Nothing is ever written over.
"""

from __future__ import annotations

import os
import re

from surge.checkpoint.atomic import remove_in_background
from surge.checkpoint.training import is_complete

_NAME = re.compile(r"^checkpoint_(\d+)$")


def checkpoints_root(project_dir: str | None) -> str:
    return os.path.join(project_dir or ".", "checkpoints")


def numbered(root: str) -> list[tuple[int, str]]:
    """``(n, path)`` of every ``checkpoint_<n>`` directory under ``root``, oldest first."""
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, name)) for name in os.listdir(root) if (m := _NAME.match(name))]
    return sorted(found)


def number_of(path: str) -> int | None:
    m = _NAME.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def next_number(root: str) -> int:
    """One more than the highest number used under ``root`` (0 when there is none)."""
    existing = numbered(root)
    return existing[-1][0] + 1 if existing else 0


def newest_complete(root: str) -> str | None:
    """The newest complete checkpoint under ``root`` (one whose save finished), HF
    Accelerate's included (see [Note: Accelerate checkpoints]); ``prune`` removes only
    surge's."""
    from surge.checkpoint.accelerate_format import accelerate_save_finished

    for _, path in reversed(numbered(root)):
        if is_complete(path) or accelerate_save_finished(path):
            return path
    return None


def prune(root: str, keep: int) -> list[str]:
    """Remove the oldest complete checkpoints beyond the newest ``keep``; returns them."""
    complete = [path for _, path in numbered(root) if is_complete(path)]
    removed = complete[:-keep] if len(complete) > keep else []
    for path in removed:
        remove_in_background(path)  # out of sight at once, deleted in a thread
    return removed
