"""What the writer asks of the operating system, outside HDF5: a lock and disk space.

* **A lock of our own.** HDF5's file locking can be switched off (``HDF5_USE_FILE_LOCKING``)
  and, when it refuses a second writer, HDF5 has already truncated the file. The writer
  therefore takes an exclusive ``flock`` on its own descriptor of the trace *before* HDF5 opens
  (let alone truncates) it, and opens the file with HDF5's locking off so that the two locks
  never meet.
* **Space reserved ahead of HDF5's writes.** HDF5 does not survive a failed write: after
  ``ENOSPC`` it may leave a file that no longer opens, or crash when it is closed. Before each
  batch of writes the writer reserves the bytes past the end of the file that the batch can
  use (``fallocate`` with ``FALLOC_FL_KEEP_SIZE``: the file's size does not change, the blocks
  are allocated). When the reservation fails the disk is full, and the writer keeps its records
  in memory instead of writing; HDF5 never sees the error. Where ``fallocate`` is not available
  (not Linux, or a file system without it) writing goes on without the reservation.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import resource
import weakref
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system: no lock of our own
    fcntl = None  # type: ignore[assignment]

from dbgcli.errors import TraceWriterError

_FALLOC_FL_KEEP_SIZE = 1
# Errors that mean "no room": a full disk, a quota, a file size limit (RLIMIT_FSIZE).
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_fallocate = _load_fallocate()


class TraceClaim:
    """An exclusive claim on a trace path: our lock, and the descriptor space is reserved on.

    Opening never truncates; with ``exclusive`` the file must not exist yet (it is created).
    Raises :class:`TraceWriterError` when another writer holds the trace.
    """

    def __init__(self, path: Path, *, exclusive: bool) -> None:
        flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if exclusive else 0)
        try:
            self.fd: int | None = os.open(path, flags, 0o666)
        except FileExistsError:
            raise TraceWriterError(
                f"{path} already exists; pass overwrite=True to replace it "
                "or resume=True to append to it"
            ) from None
        except OSError as error:
            raise TraceWriterError(f"cannot open {path} for writing: {error}") from error
        self._pid = os.getpid()
        _CLAIMS.add(self)
        self._can_reserve = _fallocate is not None
        # Only the lock holder may cut the file (release); until then it may be another's.
        self._holder = fcntl is None
        if fcntl is None:
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            self.release()
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise TraceWriterError(
                    f"{path} is being written by another writer (process or TraceWriter); "
                    "it was left untouched"
                ) from None
            raise TraceWriterError(f"cannot lock {path}: {error}") from error
        self._holder = True

    def reserve(self, end: int, nbytes: int) -> bool:
        """Allocate ``nbytes`` past ``end`` (HDF5's end of file, which may run ahead of the
        bytes on disk). False when there is no room; True when reserved or not possible here."""
        if self.fd is None:
            return True
        size = os.fstat(self.fd).st_size
        length = max(end, size) - size + max(0, nbytes)
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and size + length > limit:
            return False  # fallocate would not see the limit; the writes past it would fail
        if length <= 0 or not self._can_reserve or _fallocate is None:
            return True
        if _fallocate(self.fd, _FALLOC_FL_KEEP_SIZE, size, length) == 0:
            return True
        code = ctypes.get_errno()
        if code in NO_ROOM:
            return False
        if code != errno.EINTR:
            self._can_reserve = False  # EOPNOTSUPP and the like: write without reserving
        return True

    def release(self) -> None:
        """Give back reserved blocks past the end of the file and drop the lock. Idempotent."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        if self._holder and os.getpid() == self._pid:  # not a forked child, not a refused writer
            with contextlib.suppress(OSError):
                # Truncating to the current size frees blocks reserved past it.
                os.ftruncate(fd, os.fstat(fd).st_size)
        with contextlib.suppress(OSError):
            os.close(fd)

    def __del__(self) -> None:
        # A writer dropped without close() must not keep the lock or the descriptor.
        with contextlib.suppress(Exception):
            self.release()


# A flock belongs to the open file, which a forked child shares: a child that outlives the
# writer (a DataLoader worker, a dbg reader process) would keep the trace locked. Children
# close their copies at once; the parent's lock is unaffected.
_CLAIMS: weakref.WeakSet[TraceClaim] = weakref.WeakSet()


def _drop_inherited_claims() -> None:
    for claim in list(_CLAIMS):
        claim.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_claims)
