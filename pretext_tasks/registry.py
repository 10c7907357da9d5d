"""Task registry: registry name -> task class, so `mmrl` finds tasks without importing any by name.

Adding a task is one new module in `pretext_tasks/` whose class is decorated with `@register("name")`.
`load_tasks()` imports every module of the package once (importing `pretext_tasks` calls it), so
built-in tasks are registered as soon as the package is imported. A module that fails to import
does not take the others down: its error is kept and shown when a task lookup fails.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import pkgutil
from collections.abc import Callable
from typing import Any, TypeVar

from mmrl.config import from_dict
from mmrl.errors import ConfigError, MMRLError
from pretext_tasks.base import PretextTask

log = logging.getLogger(__name__)

T = TypeVar("T", bound=type)

PACKAGE = "pretext_tasks"
_NOT_TASKS = frozenset({"base", "registry"})  # the package's own machinery

_TASKS: dict[str, type] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_loaded = False


def register(name: str) -> Callable[[T], T]:
    """Class decorator: register a task class under `name` and set its `name` attribute.

    The class must carry a dataclass `Params` and be constructible as `cls(params)`. Registering the
    same class again (a module reload) replaces the entry; a different class under a taken name is
    an error.
    """

    def decorate(cls: T) -> T:
        params = getattr(cls, "Params", None)
        if not (isinstance(params, type) and dataclasses.is_dataclass(params)):
            raise TypeError(f"task class {cls.__qualname__} needs a dataclass attribute `Params`")
        old = _TASKS.get(name)
        if old is not None and _qualified(old) != _qualified(cls):
            raise MMRLError(f"task name '{name}' is already registered by {_qualified(old)}")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return decorate


def load_tasks() -> None:
    """Import every task module of the package once (idempotent; errors are kept, not raised)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: a task module that looks a task up while importing must not recurse
    package = importlib.import_module(PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name in _NOT_TASKS or info.name.startswith("_"):
            continue
        module = f"{PACKAGE}.{info.name}"
        try:
            importlib.import_module(module)
        except Exception as e:  # one broken module must not hide the other tasks
            _IMPORT_ERRORS[module] = f"{type(e).__name__}: {e}"
            log.warning("could not import task module %s: %s", module, _IMPORT_ERRORS[module])


def task_names() -> list[str]:
    """Registered task names, sorted."""
    load_tasks()
    return sorted(_TASKS)


def task_class(name: str) -> type:
    """The class registered as `name`; `MMRLError` listing the registered names if there is none."""
    load_tasks()
    if name in _TASKS:
        return _TASKS[name]
    close = difflib.get_close_matches(name, list(_TASKS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    broken = "".join(f"; module {m} failed to import ({err})" for m, err in sorted(_IMPORT_ERRORS.items()))
    registered = ", ".join(sorted(_TASKS)) or "none"
    raise MMRLError(f"unknown task '{name}'{hint}; registered tasks: {registered}{broken}")


def get_task(name: str, **params: Any) -> PretextTask:
    """An instance of task `name` with its `Params` built from `params` (defaults for the rest).

    Values are checked like config values (lists become tuples, ints become floats, literals are
    checked); an unknown parameter raises `ConfigError` naming it and listing the valid ones.
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
    return cls(from_dict(cls.Params, params, source=f"task '{name}'"))


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


__all__ = ["get_task", "load_tasks", "register", "task_class", "task_names"]
