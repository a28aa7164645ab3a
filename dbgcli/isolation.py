"""Read traces in worker processes that can be stopped.

A corrupt file can make HDF5's C library loop forever or allocate without bound inside one
call, where neither Python nor Ctrl-C can interrupt it. So every trace a command reads is read
in a worker process under a time limit and an address-space limit: a worker that overruns is
killed and replaced, one that dies (a crash, ``os._exit`` in a user's rule) is replaced too,
and the trace it held becomes one error line while the other traces go on.

Workers are forked where the platform allows it (they start in a millisecond with everything
already imported, even from a daemonic process) and spawned elsewhere; each runs an
``initializer`` once, then tasks one at a time. Results come back pickled.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Seconds a trace may take to be opened (its metadata read), however long it may take to
#: analyse: metadata is small, so a file still opening after this is looping in HDF5.
OPEN_SECONDS = 30.0


@dataclass(frozen=True)
class Limits:
    """What one trace may cost before its worker is stopped.

    Args:
        seconds: Wall-clock time for one trace, from handing it to a worker to its result.
        memory_mb: Address space a worker may add to what it inherited, in MiB
            (``RLIMIT_AS``); 0 for no limit. The reader keeps memory flat whatever the
            trace's length (a few hundred MiB for every rule on a 1 GB trace), so running
            out of it means a file that makes HDF5 allocate without bound.
    """

    seconds: float = 600.0
    memory_mb: int = 1024

    def __post_init__(self) -> None:
        if not self.seconds > 0 or self.seconds == float("inf"):
            raise ValueError(
                f"the time limit must be a positive number of seconds, not {self.seconds}"
            )
        if self.memory_mb < 0:
            raise ValueError(
                f"the memory limit must be 0 (none) or a number of MiB, not {self.memory_mb}"
            )


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Failed:
    """A task that ended without a result: ``message`` says why, in one line."""

    message: str


_connection: Connection | None = None


def opened() -> None:
    """Tell the parent the trace is open, so the short opening limit no longer applies.

    Called by the task inside a worker; does nothing outside one.
    """
    if _connection is not None:
        _connection.send(("opened", None))


def run_isolated(
    task: Callable[[T], R],
    items: Sequence[T],
    *,
    jobs: int = 1,
    limits: Limits = DEFAULT_LIMITS,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> list[R | Failed]:
    """Run ``task`` on every item in up to ``jobs`` workers; results in the order of ``items``.

    ``task`` and its results must be picklable where workers are spawned (they are when it is a
    module-level function). An exception a task raises comes back as :class:`Failed`.
    """
    pool = _Pool(task, limits, initializer, initargs)
    try:
        results = dict(pool.run(items, max(1, jobs)))
    finally:
        pool.close()
    return [results[index] for index in range(len(items))]


class Isolated(Generic[T, R]):
    """``task`` run in one worker kept between calls: a caller that reads the same trace again
    and again (``dbg watch``'s polls) forks once, not at every read."""

    def __init__(self, task: Callable[[T], R], limits: Limits = DEFAULT_LIMITS) -> None:
        self._pool = _Pool(task, limits, None, ())
        self._finalizer = weakref.finalize(self, self._pool.close)

    def __call__(self, item: T, label: str) -> R:
        """``task(item)``; its failure, whatever the cause, raises TraceFormatError with a
        message that starts with ``label`` (the file read)."""
        from dbgcli.errors import TraceFormatError

        ((_, outcome),) = self._pool.run([item], 1)
        if isinstance(outcome, Failed):
            message = outcome.message
            raise TraceFormatError(message if message.startswith(label) else f"{label}: {message}")
        return outcome  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the worker."""
        self._finalizer()


def call_isolated(
    task: Callable[[T], R], item: T, label: str, limits: Limits = DEFAULT_LIMITS
) -> R:
    """``task(item)`` in a worker of its own; see :meth:`Isolated.__call__`."""
    worker = Isolated(task, limits)
    try:
        return worker(item, label)
    finally:
        worker.close()


class _Forked:
    """A child made with ``os.fork``, with the part of multiprocessing.Process's interface the
    pool uses. multiprocessing refuses to start processes from a daemonic one (a worker of the
    user's own pool, say); a plain fork has no such rule and starts in about a millisecond."""

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.target, self.args = target, args
        self.exitcode: int | None = None
        self.pid = 0

    def start(self) -> None:
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork in a threaded parent; the child only reads files (a
            # lock another thread held at the fork would stall it until its time limit).
            warnings.simplefilter("ignore", DeprecationWarning)
            self.pid = os.fork()
        if self.pid == 0:  # the child
            try:
                self.target(*self.args)
            finally:
                os._exit(1)

    def is_alive(self) -> bool:
        return self.exitcode is None and not self._reaped(os.WNOHANG)

    def kill(self) -> None:
        if self.exitcode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._reaped(os.WNOHANG if deadline is not None else 0):
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    def _reaped(self, flags: int) -> bool:
        if self.exitcode is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:
            self.exitcode = -1
            return True
        if pid == 0:
            return False
        self.exitcode = os.waitstatus_to_exitcode(status)
        return True


class _Worker:
    def __init__(self, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        if hasattr(os, "fork"):
            self.connection, child_end = multiprocessing.Pipe()
            self.process: Any = _Forked(target, (child_end, self.connection, *args))
        else:
            context = multiprocessing.get_context("spawn")
            self.connection, child_end = context.Pipe()
            self.process = context.Process(target=target, args=(child_end, None, *args))
        self.process.start()
        child_end.close()
        self.index: int | None = None
        self.opened = False
        self.started = 0.0
        self.deadline = 0.0

    def give(self, index: int, item: Any, limits: Limits) -> None:
        self.index = index
        self.opened = False
        self.started = time.monotonic()
        self.deadline = self.started + min(OPEN_SECONDS, limits.seconds)
        self.connection.send(("task", item))

    def stop(self) -> None:
        """End the worker: an idle one is asked to leave, a busy one is killed."""
        if self.index is None and self.process.is_alive():
            try:
                self.connection.send(("stop", None))
            except OSError:
                pass
        else:
            self.process.kill()
        self.connection.close()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def death(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the worker reading it was killed by {name}"
        return f"the worker reading it exited with code {code}"


class _Pool:
    def __init__(
        self,
        task: Callable[[Any], Any],
        limits: Limits,
        initializer: Callable[..., None] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        self.limits = limits
        self.args = (task, limits.memory_mb, initializer, initargs)
        self.workers: list[_Worker] = []

    def close(self) -> None:
        while self.workers:
            self.workers.pop().stop()

    def run(self, items: Sequence[Any], jobs: int) -> Iterator[tuple[int, Any]]:
        """``(index, outcome)`` of every item as workers finish them; idle workers are kept
        for the next run (:meth:`close` ends them)."""
        waiting = deque(enumerate(items))
        workers = self.workers
        try:
            while waiting or any(w.index is not None for w in workers):
                while waiting and len(workers) < jobs:
                    workers.append(_Worker(_serve, self.args))
                for worker in workers:
                    if worker.index is None and waiting:
                        worker.give(*waiting.popleft(), self.limits)
                busy = [w for w in workers if w.index is not None]
                timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                ready = wait([w.connection for w in busy], timeout=timeout)
                for worker in busy:
                    index = worker.index
                    assert index is not None
                    if worker.connection in ready:
                        try:
                            kind, value = worker.connection.recv()
                        except (EOFError, OSError):
                            yield index, Failed(worker.death())
                            workers.remove(worker)
                            worker.stop()
                            continue
                        if kind == "opened":
                            worker.opened = True
                            worker.deadline = worker.started + self.limits.seconds
                            continue
                        worker.index = None
                        yield index, value
                    elif time.monotonic() >= worker.deadline:
                        seconds = worker.deadline - worker.started
                        yield (
                            index,
                            Failed(
                                f"gave up after {seconds:g} s analysing it (--timeout)"
                                if worker.opened
                                else f"gave up after {seconds:g} s opening it: HDF5 never finished "
                                "reading the file's metadata (a corrupt file?)"
                            ),
                        )
                        workers.remove(worker)
                        worker.stop()
        except BaseException:
            self.close()
            raise


def _serve(
    connection: Connection,
    parent_end: Connection | None,
    task: Callable[[Any], Any],
    memory_mb: int,
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
) -> None:
    """A worker's life: limits, initializer, then one task per item until the pipe closes."""
    global _connection
    if parent_end is not None:
        parent_end.close()  # a forked child holds a copy; the parent's end is the parent's
    # The parent handles Ctrl-C for the whole command.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_mb:
        # On top of what the fork inherited (imports, and whatever the calling process holds).
        limit = _address_space() + (memory_mb << 20)
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    warnings.simplefilter("ignore")
    _connection = connection
    try:
        if initializer is not None:
            initializer(*initargs)
    except BaseException as error:  # noqa: BLE001 - reported per item below
        failure: Failed | None = Failed(_describe(error))
    else:
        failure = None
    parent = os.getppid()
    while True:
        try:
            # Forked siblings hold copies of each other's pipes, so a parent that dies does not
            # close this one: check that it is still there.
            while not connection.poll(1.0):
                if os.getppid() != parent:
                    os._exit(0)
            kind, item = connection.recv()
        except (EOFError, OSError):
            kind = "stop"
        if kind == "stop":
            os._exit(0)
        if failure is not None:
            outcome: Any = failure
        else:
            try:
                outcome = task(item)
            except MemoryError:
                outcome = Failed(f"ran out of memory (limit {memory_mb} MiB)")
            except BaseException as error:  # noqa: BLE001 - SystemExit in a rule included
                outcome = Failed(_describe(error))
        try:
            connection.send(("done", outcome))
        except Exception as error:  # noqa: BLE001 - an unpicklable result
            connection.send(("done", Failed(f"cannot return the result: {_describe(error)}")))


def _address_space() -> int:
    """Bytes of address space this process maps now (0 where /proc cannot tell)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _describe(error: BaseException) -> str:
    """One line for a task's exception: a DbgError's message as it is; anything else is a bug
    of dbg (or of a user's rule) and says so, as the CLI says of its own."""
    from dbgcli.errors import DbgError

    if isinstance(error, SystemExit):
        return f"exited (SystemExit {error.code!r})"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, DbgError):
        return text
    return f"internal error: {type(error).__name__}: {text}"
