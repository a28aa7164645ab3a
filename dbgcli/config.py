"""Configuration from ``dbg.toml`` or the ``[tool.dbg]`` table of ``pyproject.toml``.

The file is found from the working directory upwards (the first directory holding a
``dbg.toml``, or a ``pyproject.toml`` with a ``[tool.dbg]`` table, wins) or given with
``--config``. Command-line options override it. Unknown keys are errors, so a typo never
silently does nothing::

    [tool.dbg]
    select = ["DBG1", "loss"]        # ids, id prefixes, names or categories
    ignore = ["oscillating-loss"]
    fail-on = "warning"              # info | warning | error
    mode = "train"                   # only analyse records of this mode
    loss = "nll"                     # the loss series, when its name does not say so
    rules-files = ["ci/my_rules.py"] # relative to the configuration file

    [tool.dbg.severity]
    DBG301 = "warning"

    [tool.dbg.rules.vanishing-gradient]
    threshold = 1e-6
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbgcli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

KNOWN_KEYS = {
    "select",
    "ignore",
    "fail-on",
    "mode",
    "rules-files",
    "severity",
    "rules",
    "exit-zero",
    "format",
    "loss",
}


@dataclass(frozen=True)
class Config:
    """Settings read from a configuration file (empty when there is none)."""

    path: Path | None = None
    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    fail_on: str | None = None
    mode: str | None = None
    rules_files: tuple[str, ...] = ()
    severities: dict[str, str] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    exit_zero: bool = False
    formats: tuple[str, ...] = ()
    loss: str | dict[str, str] | None = None


#: What marks a project's root directory, where the search for configuration stops.
ROOT_MARKERS = (".git", ".hg", "pyproject.toml")


def find_config(start: Path | None = None) -> Path | None:
    """The configuration file that applies to ``start`` (default: the working directory).

    The search goes up from ``start`` to the project root, the nearest directory holding
    ``.git``, ``.hg`` or ``pyproject.toml``, and no further; with no project root above, only
    ``start`` itself is searched. A configuration can name rules files, which are Python that
    dbg runs, so a ``dbg.toml`` that happens to sit in ``/tmp`` or a parent directory must not
    apply to a project below it.
    """
    directory = (start or Path.cwd()).resolve()
    folders = (directory, *directory.parents)
    root = next(
        (f for f in folders if any((f / marker).exists() for marker in ROOT_MARKERS)), directory
    )
    for folder in folders[: folders.index(root) + 1]:
        candidate = folder / "dbg.toml"
        if candidate.is_file():
            return candidate
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "dbg" in _read(pyproject).get("tool", {}):
            return pyproject
    return None


def load_config(path: Path | None = None, *, search: bool = True) -> Config:
    """Read ``path``, or the file :func:`find_config` finds; an empty Config if none."""
    if path is None:
        path = find_config() if search else None
        if path is None:
            return Config()
    elif not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    data = _read(path)
    table = data.get("tool", {}).get("dbg") if path.name == "pyproject.toml" else data
    if table is None:
        raise ConfigError(f"{path} has no [tool.dbg] table")
    unknown = sorted(set(table) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(KNOWN_KEYS))}"
        )
    rules = table.get("rules", {})
    if not isinstance(rules, dict) or not all(isinstance(v, dict) for v in rules.values()):
        raise ConfigError(
            f"{path}: [rules] must hold one table per rule, e.g. [tool.dbg.rules.DBG101]"
        )
    severity = table.get("severity", {})
    if not isinstance(severity, dict):
        raise ConfigError(f"{path}: 'severity' must be a table of rule = level")
    formats = table.get("format", ())
    return Config(
        path=path,
        select=_strings(path, "select", table["select"]) if "select" in table else None,
        ignore=_strings(path, "ignore", table.get("ignore", ())),
        fail_on=_string(path, "fail-on", table.get("fail-on")),
        mode=_string(path, "mode", table.get("mode")),
        rules_files=tuple(
            str((path.parent / f).resolve())
            for f in _strings(path, "rules-files", table.get("rules-files", ()))
        ),
        severities={str(k): str(v) for k, v in severity.items()},
        params={str(k): dict(v) for k, v in rules.items()},
        exit_zero=bool(table.get("exit-zero", False)),
        formats=_strings(path, "format", [formats] if isinstance(formats, str) else formats),
        loss=_loss(path, table.get("loss")),
    )


def _loss(path: Path, value: Any) -> str | dict[str, str] | None:
    """``loss = "tag"`` or ``loss = {train = "tag", eval = "tag"}``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) <= {"train", "eval"}:
        if all(isinstance(v, str) for v in value.values()):
            return {str(k): str(v) for k, v in value.items()}
    raise ConfigError(
        f"{path}: 'loss' must be a series name, or a table with train and/or eval series names"
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read configuration {path}: {error}") from error


def _strings(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: '{key}' must be a list of strings")
    return tuple(value)


def _string(path: Path, key: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{path}: '{key}' must be a string")
    return value
