"""The run directory's lock: a run, finalize and repair hold an exclusive flock
on ``RUN/.cartcohort.lock`` (:class:`RunLock`, the file names the holder's pid
and host) while they write; the kernel releases it when the process ends,
however it ends. Temporaries are removed only under the lock
(:func:`remove_temporaries`), so never another live run's.
"""
from datetime import datetime, timezone
import errno
import fcntl
import json
import os
from pathlib import Path
import socket
import time

from pipeline.durable import TEMPORARY, make_directories
from pipeline.layout import LOCK, RunDirectoryError


def _holder(fd):
    """Who holds the lock, from the lock file (its holder writes it just after
    taking the lock, so wait a little for it)."""
    for _ in range(40):
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
            return f"pid {info['pid']} on host {info['host']}, since {info['since']}"
        except (ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "pid and host unknown"


class RunLock:
    """An exclusive ``fcntl.flock`` on ``RUN/.cartcohort.lock``, held while a
    run, finalize or repair writes into RUN; the file names the holder (pid,
    host, since when). A second writer gets RunDirectoryError naming it. The
    kernel releases the lock when the holder's process ends (exit, kill, crash);
    the file itself stays. A context manager."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd = None

    @property
    def held(self):
        return self._fd is not None

    def acquire(self):
        try:
            make_directories(self.run_dir)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RunDirectoryError(f"{self.path}: cannot create the lock file "
                                    f"({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            busy = exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
            holder = _holder(fd) if busy else None
            os.close(fd)
            if busy:
                raise RunDirectoryError(
                    f"{self.run_dir}: another cartcohort run is writing here ({holder}); "
                    f"wait for it to end, or choose another --out") from None
            raise RunDirectoryError(
                f"{self.path}: cannot lock the run directory ({exc.strerror or exc}); it must "
                f"be on a filesystem with flock (Lustre: mount with -o flock)") from None
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self):
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)                        # closing releases the flock

    def __enter__(self):
        return self if self.held else self.acquire()

    def __exit__(self, *exc):
        self.release()


def require_lock(run_dir, lock):
    """RuntimeError unless ``lock`` is RUN's lock, held (a programming error)."""
    if not (isinstance(lock, RunLock) and lock.held
            and lock.run_dir.resolve() == Path(run_dir).resolve()):
        raise RuntimeError(f"{run_dir}: this needs the run directory's lock (RunLock)")


def remove_temporaries(run_dir, lock):
    """Delete the temporary files a killed writer left (never read as data).
    Only under RUN's held ``lock``: another live run's temporaries are files it
    is writing."""
    require_lock(run_dir, lock)
    for stale in Path(run_dir).rglob(TEMPORARY):
        stale.unlink(missing_ok=True)
