"""Rich console helpers for the CLI (the CLI and the human report are the only Rich users)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console


def stdout_console() -> Console:
    """A console on the current stdout (looked up per call so test capture works)."""
    return Console(file=sys.stdout, highlight=False, soft_wrap=False)


def stderr_console() -> Console:
    """A console for progress and logs, which never mix with machine output on stdout."""
    return Console(file=sys.stderr, highlight=False)


def human_size(size: int) -> str:
    """Bytes as a short human-readable string."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def log(message: str) -> None:
    """A note for people, on stderr (machine output on stdout stays clean)."""
    stderr_console().print(f"dbg: {message}", markup=False)


@contextlib.contextmanager
def progress(message: str, show: bool) -> Iterator[None]:
    """A spinner on stderr while work runs, only when stderr is a terminal."""
    console = stderr_console()
    if not show or not console.is_terminal:
        yield
        return
    with console.status(message):
        yield
