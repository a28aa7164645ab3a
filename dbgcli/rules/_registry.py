"""The rule registry: how a rule declares itself, and how rules are found, selected and tuned.

A rule is a plain function registered with :func:`rule`; the decorator returns it unchanged.
Its keyword-only arguments are its parameters (type from the annotation, default from the
signature, help from the docstring's ``Args:`` section), its docstring is its documentation,
and ``requires`` says what data it needs. Built-in rule modules are loaded through the
``dbg.rules`` entry-point group, exactly like third-party plugins.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from dbgcli.errors import RuleConfigError
from dbgcli.findings import Finding, Severity
from dbgcli.rules._known import eval_mode_training, trainer_logged_no_loss
from dbgcli.trace import schema

if TYPE_CHECKING:
    from dbgcli.rules._context import RuleContext
    from dbgcli.trace.derive import Derivation

ENTRY_POINT_GROUP = "dbg.rules"

RuleFunction = Callable[..., Iterable[Finding]]
# What a rule's findings can explain: rule ids or names, optionally ``ID:key`` for one kind of
# finding; for all of the rule's findings, or per key of its own findings.
Explains = Sequence[str] | Mapping[str, Sequence[str]]
Planner = Callable[["RuleContext", dict[str, Any]], Iterable[tuple[str, "Derivation"]]]

_ID = re.compile(r"^[A-Z]{1,4}[0-9]{3}$")
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Need:
    """Data a rule needs, described as ``what`` ("tensors of role 'gradients'").

    ``looks_at`` says whether it is about ``tensors`` or ``scalars``: a skip reason then names
    the series of that type whose meaning dbg could not tell (near misses the user can rename
    or label).
    """

    what: str
    test: Callable[..., bool]
    uses_params: bool = False
    describe: Callable[[dict[str, Any]], str] | None = None
    looks_at: Literal["tensors", "scalars", ""] = ""
    #: Why the trace lacks the data and what to change, where its metadata says so.
    hint: Callable[[RuleContext, dict[str, Any]], str | None] | None = None
    #: Whether the data is the training loss (given the rule's parameters): a rule that needs
    #: it and passes says training worked, as far as the loss shows (the verdict's
    #: ``healthy``).
    training_loss: Callable[[dict[str, Any]], bool] = lambda params: False

    @property
    def reason(self) -> str:
        """Why a rule is skipped when the need is not met."""
        return f"no {self.what}"

    def reason_for(self, params: dict[str, Any], ctx: RuleContext | None = None) -> str:
        """The skip reason with the rule's actual parameters filled in, and the near misses
        of the trace behind ``ctx`` (series whose meaning is unknown)."""
        text = f"no {self.describe(params)}" if self.describe is not None else self.reason
        if ctx is not None and self.looks_at:
            unknown = near_misses(ctx, self.looks_at)
            if unknown:
                text += f" (found {unknown}, whose meaning dbg cannot tell)"
        hint = None if ctx is None or self.hint is None else self.hint(ctx, params)
        if hint:
            text += f"; {hint}"
        return text

    def met(self, ctx: RuleContext, params: dict[str, Any]) -> bool:
        """Whether the trace (through ``ctx``) has the data, given the rule's parameters."""
        return bool(self.test(ctx, params) if self.uses_params else self.test(ctx))

    @staticmethod
    def tensors_in(param: str) -> Need:
        """Tensors of the roles (collections, see dbgcli.trace.roles) the rule's tuple
        parameter ``param`` names (empty: any)."""
        return Need(
            f"tensors of the roles in parameter '{param}'",
            lambda ctx, params: bool(ctx.tensors(collection=tuple(params[param]) or None)),
            uses_params=True,
            describe=lambda params: (
                f"tensors of role {_words(tuple(params[param]))}" if params[param] else "tensors"
            ),
            looks_at="tensors",
        )

    @staticmethod
    def scalar(*tags: str, mode: str | None = None) -> Need:
        """Any one of the scalar series ``tags`` (in ``mode``, if given)."""
        where = f" ({mode} records)" if mode else ""
        return Need(
            f"scalar series {_words(tags)}{where}",
            lambda ctx: any(ctx.scalar(tag, mode) is not None for tag in tags),
            looks_at="scalars",
        )

    @staticmethod
    def loss(mode: str = "train") -> Need:
        """A loss series of ``mode`` (see RuleContext.loss for the names it looks for)."""
        return Need(
            f"{mode} loss series",
            lambda ctx: ctx.loss(mode) is not None,
            looks_at="scalars",
            hint=lambda ctx, params: _unlogged_loss(ctx, mode),
            training_loss=lambda params: mode == "train",
        )

    @staticmethod
    def loss_of(param: str) -> Need:
        """A loss series of the mode the rule's parameter ``param`` names (train or eval)."""
        return Need(
            f"loss series of the mode in parameter '{param}'",
            lambda ctx, params: ctx.loss(params[param]) is not None,
            uses_params=True,
            describe=lambda params: f"{params[param]} loss series",
            looks_at="scalars",
            training_loss=lambda params: params[param] == "train",
            hint=lambda ctx, params: _unlogged_loss(ctx, params[param]),
        )

    @staticmethod
    def accuracy(mode: str = "train") -> Need:
        """An accuracy series of ``mode`` (see RuleContext.accuracy)."""
        return Need(
            f"{mode} accuracy series",
            lambda ctx: ctx.accuracy(mode) is not None,
            looks_at="scalars",
        )

    @staticmethod
    def tensors(
        collection: str | Sequence[str] | None = None,
        kind: str | Sequence[str] | None = None,
        pattern: str | None = None,
    ) -> Need:
        """At least one tensor tag of ``collection`` / ``kind`` / glob ``pattern``."""
        parts = []
        if collection:
            parts.append(f"role {_words(collection)}")
        if kind:
            parts.append(f"kind {_words(kind)}")
        if pattern:
            parts.append(f"name matching {pattern!r}")
        what = "tensors" + (" of " + ", ".join(parts) if parts else "")
        return Need(
            what,
            lambda ctx: bool(ctx.tensors(collection=collection, kind=kind, pattern=pattern)),
            looks_at="tensors",
        )

    @staticmethod
    def any_of(*needs: Need) -> Need:
        """At least one of ``needs``."""
        return Need(
            " or ".join(n.what for n in needs),
            lambda ctx, params: any(n.met(ctx, params) for n in needs),
            uses_params=True,
        )

    @staticmethod
    def torch_hook_note(key: str, what: str) -> Need:
        """The PyTorch hook watched the run for what it notes under the metadata's ``key``
        (it notes ``torch_version``), or the note is there (written by hand)."""
        return Need(
            f"PyTorch hook watching {what} (run metadata torch_version, or a note {key})",
            lambda ctx: "torch_version" in ctx.trace.metadata or key in ctx.trace.metadata,
        )

    @staticmethod
    def mode(mode: str) -> Need:
        """Records of ``mode`` are present (and not filtered out)."""
        return Need(f"{mode} records", lambda ctx: ctx.has_mode(mode))


def _unlogged_loss(ctx: RuleContext, mode: str) -> str | None:
    """Why a run has no training loss when its metadata says: a ``Trainer`` that logged none,
    or a model that trained in eval mode, whose losses were recorded as evaluation."""
    if mode != "train":
        return None
    metadata = ctx.trace.metadata
    in_eval_mode = eval_mode_training(metadata)
    if in_eval_mode is not None:
        return (
            f"the model trained in eval mode from step {in_eval_mode.step} (model.train() never "
            "called?), so its training losses were recorded as evaluation"
        )
    return trainer_logged_no_loss(metadata.get(schema.META_TRAINER_LOGGING))


_NEAR_MISSES = 3


def near_misses(ctx: RuleContext, looks_at: str) -> str:
    """Up to three series of the trace whose meaning is unknown: tensors without a role,
    scalars whose name :func:`~dbgcli.trace.roles.scalar_meaning` cannot place and that the
    configuration or the trace's metadata does not name as the loss."""
    from dbgcli.trace.roles import scalar_meaning

    if looks_at == "tensors":
        unknown = [
            f"{info.tag!r}" + (f" in collection {info.collection!r}" if info.collection else "")
            for info in ctx.trace.tags(scalar=False)
            if info.role is None
        ]
    else:
        designated = {ctx.loss_tag("train"), ctx.loss_tag("eval")}
        unknown = [
            repr(info.tag)
            for info in ctx.trace.tags(scalar=True)
            if scalar_meaning(info.tag).quantity is None and info.tag not in designated
        ]
    if not unknown:
        return ""
    more = f" and {len(unknown) - _NEAR_MISSES} more" if len(unknown) > _NEAR_MISSES else ""
    return ", ".join(unknown[:_NEAR_MISSES]) + more


def _words(value: str | Sequence[str]) -> str:
    values = [value] if isinstance(value, str) else list(value)
    return " or ".join(repr(v) for v in values)


@dataclass(frozen=True)
class Param:
    """One tunable parameter of a rule, read from its signature and docstring."""

    name: str
    annotation: Any
    default: Any
    help: str

    @property
    def type_name(self) -> str:
        """The annotation as written for humans (``float``, ``int | None``, ...)."""
        return _type_name(self.annotation)

    def coerce(self, value: Any) -> Any:
        """Convert a CLI string or config value to the parameter's type; raise ValueError."""
        return _coerce(self.annotation, value)


@dataclass(frozen=True)
class RuleSpec:
    """A registered rule."""

    id: str
    name: str
    severity: Severity
    category: str
    requires: tuple[Need, ...]
    params: tuple[Param, ...]
    function: RuleFunction
    plan: Planner | None
    default_enabled: bool
    source: str
    per_tensor: bool = False
    explains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    label: Mapping[str, str] = field(default_factory=dict)
    named_only: frozenset[str] = frozenset()

    def explained_by(self, key: str) -> tuple[str, ...]:
        """What a finding of this rule with ``key`` can explain (``ID`` or ``ID:key`` entries)."""
        return self.explains.get(key, self.explains.get("*", ()))

    def title(self, key: str) -> str:
        """The diagnosis a finding of this rule with ``key`` names, e.g. "learning rate too
        high" (its label for the key, else for all keys, else the rule's name)."""
        return self.label.get(key) or self.label.get("*") or self.name.replace("-", " ")

    def fix(self, key: str | None = None) -> str:
        """What fixes a finding with ``key``: the docstring's ``Fix (key ``k``):`` paragraph
        for that key, else its ``Fix:`` paragraph, as one line of plain text (code spans
        quoted: ``dbg lr`` becomes 'dbg lr'); empty when there is none."""
        doc = _docstring(self.function)
        text = (key is not None and _paragraph(doc, f"Fix (key ``{key}``):")) or _paragraph(
            doc, "Fix:"
        )
        return re.sub(r"``(.+?)``", r"'\1'", text)

    @property
    def summary(self) -> str:
        """First line of the docstring."""
        return _docstring(self.function).split("\n", 1)[0].strip()

    @property
    def description(self) -> str:
        """The docstring without its summary line and ``Args:`` section."""
        body = _docstring(self.function).split("\n", 1)
        text = body[1] if len(body) > 1 else ""
        return _strip_args_section(text).strip()

    def param(self, name: str) -> Param:
        """The parameter ``name``; raises RuleConfigError naming the valid ones."""
        for param in self.params:
            if param.name == name:
                return param
        valid = ", ".join(p.name for p in self.params) or "none"
        raise RuleConfigError(
            f"rule {self.id} ({self.name}) has no parameter {name!r}; parameters: {valid}"
        )

    def defaults(self) -> dict[str, Any]:
        """Parameter defaults."""
        return {p.name: p.default for p in self.params}


class Registry:
    """Every rule known to this process, by id and by name."""

    def __init__(self) -> None:
        self._by_id: dict[str, RuleSpec] = {}
        self._by_name: dict[str, RuleSpec] = {}
        self._loaded = False

    def register(self, spec: RuleSpec) -> None:
        """Add a rule; ids and names must be unique."""
        for key, table in ((spec.id, self._by_id), (spec.name, self._by_name)):
            existing = table.get(key)
            if existing is not None and existing.function is not spec.function:
                raise RuleConfigError(
                    f"rule {key!r} from {spec.source} is already registered by {existing.source}"
                )
        self._by_id[spec.id] = spec
        self._by_name[spec.name] = spec

    def load(self) -> None:
        """Import every module registered under the ``dbg.rules`` entry-point group, once."""
        if self._loaded:
            return
        self._loaded = True
        for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                entry.load()
            except Exception as error:  # noqa: BLE001 - a broken plugin is a config error
                raise RuleConfigError(
                    f"cannot load rule plugin {entry.name!r} ({entry.value}): {error}"
                ) from error

    def load_file(self, path: str | Path) -> None:
        """Import a user file of rules (``--rules-file``); its rules register like built-ins."""
        file_path = Path(path)
        if not file_path.is_file():
            raise RuleConfigError(f"rules file {file_path} does not exist")
        module_name = f"dbg_user_rules_{abs(hash(str(file_path.resolve())))}"
        if module_name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(module_name, file_path)
        if spec is None or spec.loader is None:
            raise RuleConfigError(f"cannot import rules file {file_path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except RuleConfigError:
            del sys.modules[module_name]
            raise
        except (Exception, SystemExit) as error:  # noqa: BLE001 - exit codes are ours
            del sys.modules[module_name]
            raise RuleConfigError(
                f"cannot import rules file {file_path}: {type(error).__name__}: {error}"
            ) from error

    def all(self) -> list[RuleSpec]:
        """Every rule, by id."""
        self.load()
        return [self._by_id[key] for key in sorted(self._by_id)]

    def find(self, key: str) -> RuleSpec | None:
        """A rule by id or name, or None."""
        self.load()
        return self._by_id.get(key.upper()) or self._by_name.get(key.lower())

    def get(self, key: str) -> RuleSpec:
        """A rule by id or name (case-insensitive id); raises RuleConfigError."""
        spec = self.find(key)
        if spec is None:
            raise RuleConfigError(
                f"unknown rule {key!r}; see 'dbg rules list' for the {len(self._by_id)} rules"
            )
        return spec

    def categories(self) -> list[str]:
        """Every category, sorted."""
        return sorted({spec.category for spec in self.all()})

    def select(
        self, select: Sequence[str] | None = None, ignore: Sequence[str] = ()
    ) -> list[RuleSpec]:
        """Rules chosen by ``select`` and ``ignore`` (ids, names, id prefixes, categories).

        Without ``select`` the rules enabled by default are chosen. Between a matching select
        and a matching ignore token the more specific one wins (longest id prefix; a name, a
        full id or a category counts as most specific), as in flake8.
        """
        rules = self.all()
        for token in [*(select or ()), *ignore]:
            if not any(_match(token, spec) for spec in rules):
                choices = ", ".join(self.categories())
                raise RuleConfigError(
                    f"{token!r} matches no rule id, id prefix, name or category "
                    f"(categories: {choices}; ids look like DBG101; see 'dbg rules list')"
                )
        chosen = []
        for spec in rules:
            if select:
                picked = max((_match(token, spec) for token in select), default=0)
            else:
                picked = 1 if spec.default_enabled else 0
            dropped = max((_match(token, spec) for token in ignore), default=0)
            if picked and picked > dropped:
                chosen.append(spec)
        return chosen


def _match(token: str, spec: RuleSpec) -> int:
    """How specifically ``token`` names ``spec``: 0 no match, higher is more specific."""
    token = token.strip()
    if token.lower() in ("all", spec.name, spec.category.lower()) or token.upper() == spec.id:
        return 100
    upper = token.upper()
    if len(upper) >= 1 and spec.id.startswith(upper):
        return len(upper)
    return 0


REGISTRY = Registry()


def rule(
    id: str,  # noqa: A002 - the rule's id is what everyone calls it
    name: str,
    *,
    severity: Severity | str,
    category: str,
    requires: Need | Sequence[Need] = (),
    plan: Planner | None = None,
    default_enabled: bool = True,
    per_tensor: bool = False,
    explains: Explains = (),
    label: str | Mapping[str, str] = "",
    named_only: Collection[str] = (),
) -> Callable[[RuleFunction], RuleFunction]:
    """Register a rule function; returns it unchanged.

    Args:
        id: Stable code such as ``DBG101``: one to four capitals and three digits. The first
            digit is the family, so ``--select DBG1`` picks a family.
        name: Stable kebab-case name, usable wherever an id is.
        severity: Default severity of its findings.
        category: Family name (``gradients``, ``loss``, ...), selectable like an id.
        requires: Data the rule needs; if any is absent the rule is skipped with the reason.
        plan: For rules that read full tensors: given the context and the parameters, the
            ``(tag, derivation)`` pairs the rule will ask for, so that the engine reads each
            tensor once for all rules.
        default_enabled: Whether the rule runs when no ``--select`` is given.
        per_tensor: The rule judges each tensor on its own: its findings on a trace are its
            findings on every tensor alone, in tag order. The engine then runs it once per
            tensor (``ctx.tensors()`` yields just that one), together with the other
            per-tensor rules, so a tensor's statistics are in memory once for all of them.
        explains: The findings this rule's findings can cause, when they start no later:
            rule ids or names (``"DBG101"``), or ``"ID:key"`` for one kind of finding
            (``"DBG502:too-large"``); a mapping from this rule's own finding keys to such
            lists when its kinds of findings explain different things (``"*"``: any key).
            The report folds explained findings under their cause (see dbgcli.diagnosis).
        label: What the diagnosis is called when a finding of this rule is the cause, as a
            short phrase ("dying ReLU"), or a mapping from finding keys to phrases
            (``{"too-high": "learning rate too high", ...}``); default: the rule's name.
        named_only: Keys of this rule's findings that another rule's ``explains`` covers only
            by naming them (``"ID:key"``), not by the bare id: a kind of finding unlike the
            rule's usual one, which the usual one's causes do not bring about.
    """

    def register(function: RuleFunction) -> RuleFunction:
        if not _ID.match(id):
            raise RuleConfigError(f"rule id {id!r} must be 1-4 capitals and 3 digits, like DBG101")
        if not _NAME.match(name):
            raise RuleConfigError(f"rule name {name!r} must be kebab-case, like vanishing-gradient")
        if isinstance(named_only, str):
            raise RuleConfigError(
                f"rule {id}: named_only takes a list of finding keys, not the string {named_only!r}"
            )
        if not _docstring(function):
            raise RuleConfigError(
                f"rule {id} ({function.__qualname__}) needs a docstring: it is its documentation"
            )
        spec = RuleSpec(
            explains=_explains(id, explains),
            label={"*": label} if isinstance(label, str) and label else dict(label or {}),
            id=id,
            name=name,
            severity=Severity(severity),
            category=category,
            requires=(requires,) if isinstance(requires, Need) else tuple(requires),
            params=_params_of(id, function),
            function=function,
            plan=plan,
            default_enabled=default_enabled,
            per_tensor=per_tensor,
            named_only=frozenset(named_only),
            source=f"{function.__module__}.{function.__qualname__}",
        )
        REGISTRY.register(spec)
        return function

    return register


def _explains(rule_id: str, explains: Explains) -> dict[str, tuple[str, ...]]:
    """``{own key or "*": (target, ...)}`` from the decorator's ``explains``."""
    table = {"*": explains} if not isinstance(explains, Mapping) else dict(explains)
    result: dict[str, tuple[str, ...]] = {}
    for key, targets in table.items():
        if isinstance(targets, str):
            raise RuleConfigError(
                f"rule {rule_id}: explains takes a list of rule ids, not the string {targets!r}"
            )
        result[key] = tuple(targets)
    return result


def _paragraph(doc: str, heading: str) -> str:
    """The docstring paragraph that starts with ``heading``, without it, on one line."""
    for block in re.split(r"\n\s*\n", doc):
        text = " ".join(line.strip() for line in block.strip().splitlines())
        if text.startswith(heading):
            return text[len(heading) :].strip()
    return ""


def _params_of(rule_id: str, function: RuleFunction) -> tuple[Param, ...]:
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function)
    helps = _args_help(_docstring(function))
    params = []
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) != 1:
        raise RuleConfigError(
            f"rule {rule_id} must take exactly one positional argument (the context)"
        )
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            if parameter.default is inspect.Parameter.empty:
                raise RuleConfigError(
                    f"rule {rule_id}: parameter {parameter.name!r} needs a default"
                )
            if parameter.name not in hints:
                raise RuleConfigError(
                    f"rule {rule_id}: parameter {parameter.name!r} needs a type annotation"
                )
            annotation = hints[parameter.name]
            try:
                _coerce(annotation, parameter.default)
            except ValueError as error:
                raise RuleConfigError(
                    f"rule {rule_id}: default of {parameter.name!r}: {error}"
                ) from error
            params.append(
                Param(parameter.name, annotation, parameter.default, helps.get(parameter.name, ""))
            )
        elif parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            raise RuleConfigError(
                f"rule {rule_id}: *args and **kwargs are not allowed; name each parameter"
            )
    return tuple(params)


def _docstring(function: Callable[..., Any]) -> str:
    return inspect.cleandoc(function.__doc__ or "")


def _args_help(doc: str) -> dict[str, str]:
    """``{parameter: help}`` from a Google-style ``Args:`` section.

    A parameter starts a line at the indentation of the section's first entry; deeper lines
    continue the previous help (even when they begin with ``word:``).
    """
    helps: dict[str, str] = {}
    in_args = False
    indent: int | None = None
    current = None
    for line in doc.splitlines():
        if line.strip() == "Args:":
            in_args = True
            continue
        if not in_args:
            continue
        if line and not line.startswith(" "):
            break
        depth = len(line) - len(line.lstrip())
        match = re.match(r"^\s+(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if match and (indent is None or depth == indent):
            indent = depth
            current = match.group(1)
            helps[current] = match.group(2).strip()
        elif current and line.strip():
            helps[current] += " " + line.strip()
    return helps


def _strip_args_section(text: str) -> str:
    lines = text.splitlines()
    out = []
    skipping = False
    for line in lines:
        if line.strip() == "Args:":
            skipping = True
            continue
        if skipping and line and not line.startswith(" "):
            skipping = False
        if not skipping:
            out.append(line)
    return "\n".join(out)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(annotation: Any, value: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None or (
            isinstance(value, str) and value.strip().lower() in ("none", "null", "")
        ):
            if type(None) in args:
                return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(option, value)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        text = value.strip() if isinstance(value, str) else value
        if text not in args:
            raise ValueError(f"{value!r} is not one of {', '.join(repr(a) for a in args)}")
        return text
    if origin is tuple:
        item = args[0] if args else str
        items = (
            [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
        )
        return tuple(_coerce(item, v) for v in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"{value!r} is not a boolean (true/false)")
    if annotation is int:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not an integer")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not an integer") from None
        if not math.isfinite(number) or not number.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return int(number)
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number") from None
        # Every comparison with NaN is false: a NaN threshold would pass every trace.
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a string")
        return value
    raise ValueError(f"unsupported parameter type {annotation!r}")


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin is tuple:
        return f"list of {_type_name(args[0]) if args else 'str'}"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))
