"""The registry: tasks, games and suites found by name, so the engine never imports a plugin.

Plugins are declared as entry points of their distribution, the built-in ones included
(pyproject.toml of mmrl):

    [project.entry-points."mmrl.tasks"]      name = "package.module:TaskClass"
    [project.entry-points."mmrl.games"]      name = "package.module:GameClass"
    [project.entry-points."mmrl.suites"]     name = "package.module:SUITE"

so a task written in another package becomes `mmrl generate --task <name>` and `data.sources:
[{task: <name>}]` once that package is installed (docs/writing_a_task.md). Entry points are read with
`importlib.metadata`; a module is imported only when its name is first looked up. A name declared
by two distributions is an error naming both; an unknown name lists the installed ones.
`register(name)` adds a class in-process (a notebook, a test) under the same rules.

A task class has a `name` (its registry name), a dataclass `Params`, and `sources`, `make`,
`reward` (the contract and its optional hooks: `mmrl.task.Task`). A game has `name`, `Config`,
`producer` and `play` (`mmrl.contracts.Game`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

from mmrl import config_tools
from mmrl.errors import ConfigError, MMRLError

T = TypeVar("T")

GROUPS = {"task": "mmrl.tasks", "game": "mmrl.games", "suite": "mmrl.suites"}
"""Kind of plugin -> entry-point group."""

_IN_PROCESS: dict[str, dict[str, Any]] = {kind: {} for kind in GROUPS}
_LOADED: dict[str, dict[str, Any]] = {kind: {} for kind in GROUPS}
_REQUIRED = {
    "task": ("sources", "make", "reward", "reference_completion", "random_answer", "constant_answer", "evidence"),
    "game": ("Config", "producer", "play"),
    "suite": ("blocks",),
}


@functools.cache
def _declared(kind: str) -> dict[str, metadata.EntryPoint]:
    """The entry points of `kind`, by name; two distributions declaring one name is an error."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=GROUPS[kind]):
        old = found.get(ep.name)
        if old is not None and _distribution(old) != _distribution(ep):
            raise MMRLError(
                f"{kind} name '{ep.name}' is declared by two installed packages: {_distribution(old)} "
                f"({old.value}) and {_distribution(ep)} ({ep.value}); uninstall one of them"
            )
        found[ep.name] = ep
    return found


def names(kind: str) -> list[str]:
    """Every registered name of `kind` (`task`, `game`, `suite`), sorted."""
    return sorted(set(_declared(kind)) | set(_IN_PROCESS[kind]))


def lookup(kind: str, name: str) -> Any:
    """The class or object registered as `name`; MMRLError listing the installed names if there is none."""
    if name in _IN_PROCESS[kind]:
        return _IN_PROCESS[kind][name]
    if name in _LOADED[kind]:
        return _LOADED[kind][name]
    ep = _declared(kind).get(name)
    if ep is None:
        close = difflib.get_close_matches(name, names(kind), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise MMRLError(f"unknown {kind} '{name}'{hint}; installed {kind}s: {', '.join(names(kind)) or 'none'}")
    try:
        obj = ep.load()
    except Exception as e:  # a broken plugin names itself instead of taking the process down
        raise MMRLError(
            f"{kind} '{name}' ({ep.value}, package {_distribution(ep)}) failed to import: {type(e).__name__}: {e}"
        ) from e
    _check(kind, name, obj, f"{ep.value} (package {_distribution(ep)})")
    _LOADED[kind][name] = obj
    return obj


def register(name: str, kind: str = "task") -> Callable[[T], T]:
    """Class decorator: register a plugin in this process only (packages declare entry points instead).

    Sets the class's `name` (a class that declares its own must declare this one). A name taken by another
    plugin is an error naming it.
    """

    def decorate(obj: T) -> T:
        own = vars(obj).get("name", name)  # its own name; a subclass may reuse its parent's code under another
        if own != name:
            raise MMRLError(f"{_qualified(obj)} is named '{own}', not '{name}'")
        obj.name = name  # type: ignore[attr-defined]
        old = _IN_PROCESS[kind].get(name)
        declared = _declared(kind).get(name)
        if old is not None and _qualified(old) != _qualified(obj):
            raise MMRLError(f"{kind} name '{name}' is already registered by {_qualified(old)}")
        if declared is not None and declared.value.replace(":", ".") != _qualified(obj):
            raise MMRLError(
                f"{kind} name '{name}' is already registered by {declared.value} (package {_distribution(declared)})"
            )
        _check(kind, name, obj, _qualified(obj))
        _IN_PROCESS[kind][name] = obj
        return obj

    return decorate


# --------------------------------------------------------------------------------------------------
# Tasks


def task_names() -> list[str]:
    """Registered task names, sorted."""
    return names("task")


def task_class(name: str) -> type:
    """The task class registered as `name`."""
    return lookup("task", name)


def get_task(name: str, **params: Any) -> Any:
    """An instance of task `name` with its `Params` built from `params` (defaults for the rest).

    Values are checked like config values (lists become tuples, ints become floats, literals and
    ranges are checked); an unknown parameter raises `ConfigError` naming it and listing the valid ones.
    """
    cls = task_class(name)
    valid = [f.name for f in dataclasses.fields(cls.Params)]
    for key in params:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown parameter '{key}' for task '{name}'{hint}; valid parameters: {', '.join(valid)}"
            )
    return cls(config_tools.from_dict(cls.Params, params, source=f"task '{name}'"))


# --------------------------------------------------------------------------------------------------
# Games and suites


def game(name: str) -> Any:
    """The game registered as `name` (an `mmrl.contracts.Game`)."""
    return lookup("game", name)


def suite(name: str) -> Any:
    """The evaluation suite registered as `name` (e.g. `viu`)."""
    return lookup("suite", name)


# --------------------------------------------------------------------------------------------------
# Helpers


def _check(kind: str, name: str, obj: Any, where: str) -> None:
    """A plugin must carry what the engine calls; say what is missing, and where the plugin lives."""
    missing = [attr for attr in _REQUIRED[kind] if not hasattr(obj, attr)]
    if kind == "task":
        params = getattr(obj, "Params", None)
        if not (isinstance(params, type) and dataclasses.is_dataclass(params)):
            missing.append("Params (a dataclass)")
    if missing:
        hint = " (subclass mmrl.task.Task: it defines the optional hooks)" if kind == "task" else ""
        raise MMRLError(f"{kind} '{name}' ({where}) lacks {', '.join(missing)}{hint}")
    if getattr(obj, "name", name) != name:
        raise MMRLError(f"{kind} '{name}' ({where}) calls itself '{obj.name}'; the two names must agree")


def _distribution(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "unknown package"


def _qualified(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


__all__ = ["GROUPS", "game", "get_task", "lookup", "names", "register", "suite", "task_class", "task_names"]
