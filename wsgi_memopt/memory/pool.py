"""The worker pool this process belongs to, and the lease that recycles one worker at a time.

Several workers of one gunicorn or uWSGI master usually share one container limit. When the
limit comes near, the worker to recycle is the one whose exit gives back the most, and only one
of them goes at a time, so the pool never loses all its capacity at once::

    server = serving_master()            # "gunicorn", "uwsgi" or None (nothing respawns us)
    pool = current_pool()                # the master's workers and their RSS
    lease = RecycleLease.for_master(pool.master_pid)
    if lease is not None and lease.try_acquire():
        ...                              # recycle; the lease ends when this process exits

The lease is an exclusive ``flock`` on a file named after the master's PID, in a directory
only this user can write (``<tmp>/wsgi-memopt-<uid>``). The recycling worker keeps it until it
exits, when the kernel releases it: its siblings see the memory it gave back before any of them
may go next.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import sys
import tempfile
from dataclasses import dataclass

import psutil

__all__ = ["Pool", "RecycleLease", "current_pool", "serving_master"]

log = logging.getLogger("wsgi_memopt")


def serving_master() -> str | None:
    """``"gunicorn"`` or ``"uwsgi"`` when this process is a worker a master respawns."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None:
        # uWSGI started without --master respawns nothing: a worker's SIGHUP would end the
        # server for good. masterpid() is 0 then.
        try:
            return "uwsgi" if int(uwsgi.masterpid()) > 0 else None
        except Exception:
            return None  # a module of that name that is not uWSGI's
    if "gunicorn" in sys.modules and "gunicorn.workers.base" in sys.modules:
        try:
            parent = psutil.Process(os.getppid())
            if "gunicorn" in " ".join(parent.cmdline()):
                return "gunicorn"
        except Exception:
            return None
    return None


@dataclass(frozen=True)
class Pool:
    """The workers of this process's master, as measured now (RSS in bytes)."""

    server: str  # "gunicorn" or "uwsgi"
    master_pid: int
    workers: dict[int, int]  # pid -> RSS

    def largest(self) -> int | None:
        """The PID of the worker with the largest RSS (the lowest PID among equals)."""
        if not self.workers:
            return None
        return min(self.workers, key=lambda pid: (-self.workers[pid], pid))


def current_pool() -> Pool | None:
    """This worker's pool when a gunicorn or uWSGI master respawns it, else None."""
    # A parent whose command line merely says "uwsgi" (uWSGI without --master forks its
    # workers from the first one) is no master: serving_master() tells.
    server = serving_master()
    if server is None:
        return None
    try:
        master = psutil.Process(os.getppid())
        workers = {}
        for child in master.children():
            with contextlib.suppress(psutil.Error):  # a worker that exited while we looked
                workers[child.pid] = child.memory_info().rss
        return Pool(server, master.pid, workers)
    except psutil.Error:
        return None


class RecycleLease:
    """An exclusive, non-blocking lock shared by the workers of one master.

    :param path: the lock file; :meth:`for_master` picks it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @classmethod
    def for_master(cls, master_pid: int, directory: str | None = None) -> RecycleLease | None:
        """The lease of the pool of ``master_pid``, or None when no safe place for it exists."""
        try:
            folder = _private_directory(directory)
        except OSError as error:
            log.warning("[MEMORY] no place for the pool's recycle lock (%s)", error)
            return None
        return cls(os.path.join(folder, f"recycle-{master_pid}.lock"))

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lease if no other worker holds it; it is kept until this process exits.

        False when another process holds it. An unusable lock file counts as free (logged):
        a recycle that may overlap another beats an OOM kill.
        """
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            return self._unusable(error)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as error:
            os.close(fd)
            return self._unusable(error)
        self._fd = fd  # never closed: the kernel releases the lock when this process exits
        return True

    def _unusable(self, error: OSError) -> bool:
        log.warning("[MEMORY] recycle lock %s unusable (%s): recycling anyway", self.path, error)
        return True

    def after_fork(self) -> None:
        """A forked child holds no lease of its own (the parent's descriptor is not its)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _private_directory(directory: str | None) -> str:
    """``directory`` or ``<tmp>/wsgi-memopt-<uid>``, created 0700; refused unless it is a real
    directory owned by this user and writable by no one else (a shared /tmp is hostile)."""
    folder = directory or os.path.join(tempfile.gettempdir(), f"wsgi-memopt-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{folder} is not a directory")
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise OSError(f"{folder} is not this user's alone")
    return folder
