"""Writes that are never seen half-done.

[Note: write aside, then rename]
Everything surge saves is written under a temporary name in the destination's own
directory (same filesystem, so the rename is atomic), flushed to disk, then renamed
into place. A process killed mid-write leaves the previous file intact and at worst a
stray ``.surge-tmp-*`` entry that no loader picks up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator

TMP_PREFIX = ".surge-tmp-"


def _fsync_dir(path: str) -> None:
    # Makes the rename itself durable. Directories cannot be opened on some platforms.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically.

    Raises:
        IsADirectoryError: ``path`` is an existing directory.
        Whatever ``write`` raises; the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save to {path!r}: it is a directory; give a file path.")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(parent)


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike[str]) -> Iterator[str]:
    """A fresh temporary directory inside ``parent``, removed on exit whatever happens.

    Move what should survive out of it (``publish_files``, ``publish_directory``) before
    the block ends.
    """
    parent = os.fspath(parent)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}")
    os.mkdir(tmp)
    try:
        yield tmp
    finally:
        if os.path.exists(tmp):  # gone when it was published whole
            shutil.rmtree(tmp, ignore_errors=True)


def publish_directory(staging: str, destination: str) -> None:
    """Flush every file in ``staging`` and rename the directory to ``destination``
    (which must not exist): the whole set appears at once."""
    for name in os.listdir(staging):
        path = os.path.join(staging, name)
        if os.path.isfile(path):
            _fsync_file(path)
    os.rename(staging, destination)
    _fsync_dir(os.path.dirname(os.path.abspath(destination)))


def publish_files(staging: str, destination: str, names: list[str]) -> None:
    """Flush ``names`` in ``staging`` and rename them into ``destination`` in the order
    given (put the file that makes the set visible, such as an index, last)."""
    for name in names:
        _fsync_file(os.path.join(staging, name))
    for name in names:
        os.replace(os.path.join(staging, name), os.path.join(destination, name))
    _fsync_dir(destination)


def remove_in_background(path: str) -> None:
    """Take the directory ``path`` out of sight at once (renamed to a temporary name no
    loader picks) and delete it in a thread: deleting gigabytes of old checkpoint files
    does not hold up training. The thread is not a daemon, so the process finishes the
    deletion before it exits."""
    hidden = hidden_name(path)
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return
    delete_in_background(hidden)


def hidden_name(path: str) -> str:
    """A fresh name beside ``path`` that no loader picks up."""
    return os.path.join(os.path.dirname(path), f"{TMP_PREFIX}old-{uuid.uuid4().hex}-{os.path.basename(path)}")


def delete_in_background(path: str) -> None:
    """Delete the directory ``path`` in a (non-daemon) thread."""
    threading.Thread(target=shutil.rmtree, args=(path,), kwargs={"ignore_errors": True},
                     name="surge-remove-old-checkpoint").start()
