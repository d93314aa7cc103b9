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


def _umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux's
    /proc); elsewhere set and restored at once."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_default_mode(*paths: str) -> None:
    """Set each file to the mode a plain ``open(path, "w")`` would give it under the
    user's umask. Writers such as safetensors create private (0600) files; a file
    renamed into place must look like every other file of the checkpoint."""
    mode = 0o666 & ~_umask()
    for path in paths:
        _chmod(path, mode)


def give_default_modes(directory: str) -> None:
    """:func:`give_default_mode` for every file under ``directory``."""
    mode = 0o666 & ~_umask()
    for root, _, files in os.walk(directory):
        for name in files:
            _chmod(os.path.join(root, name), mode)


def _chmod(path: str, mode: int) -> None:
    # Another process's file on a shared filesystem (another user, root squashed) may not
    # be ours to change; its writer gave it that user's mode, and the save goes on.
    with contextlib.suppress(PermissionError):
        os.chmod(path, mode)


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
        give_default_mode(tmp)
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
    give_default_modes(staging)
    for name in os.listdir(staging):
        path = os.path.join(staging, name)
        if os.path.isfile(path):
            _fsync_file(path)
    os.rename(staging, destination)
    _fsync_dir(os.path.dirname(os.path.abspath(destination)))


def publish_files(staging: str, destination: str, names: list[str]) -> None:
    """Flush ``names`` in ``staging`` and rename them into ``destination`` in the order
    given (put the file that makes the set visible, such as an index, last)."""
    give_default_mode(*(os.path.join(staging, name) for name in names))
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


def replace_directory(staging: str, directory: str) -> None:
    """Rename ``staging`` to ``directory``, its files given the user's default mode; an
    old ``directory`` is set aside first and removed (in the background) only after the
    new one is in place."""
    give_default_modes(staging)
    old = None
    if os.path.exists(directory):
        old = hidden_name(directory)
        os.rename(directory, old)
    os.rename(staging, directory)
    _fsync_dir(os.path.dirname(directory))
    if old is not None:
        delete_in_background(old)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write a small text file (e.g. ``latest``)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)
