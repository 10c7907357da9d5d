"""The config machinery: dataclass configs built from YAML and `a.b=c` overrides, checked, described.

Every field carries a docstring (the string literal right under it, CleanRL style). `field_docs`
reads them back from the source so that `--help` and error messages can quote them; a test checks
that no field lacks one. Unknown keys are errors that name the key and list the valid ones.

Every numeric field declares its valid range in its annotation, `steps: Annotated[int, ">= 1"]`: a
comparison (`> 0`, `>= 1`, `<= 1`) or an interval (`[0, 1)`), applying to each number of a tuple.
Rules that tie fields together live in the class's `config_rules` method. `load_config` checks both
(and rejects NaN and infinite floats everywhere) once the YAML file and the overrides are applied, so
a bad value is reported, naming its key and range, before any work starts.

A field with the metadata `{"plugin": kind}` is a plugin section: its schema is the `Config` of the
registered plugin its `name` key picks (`game.name: spy`), or `NoGame` when it names none. The schemas
of a run are in `mmrl.config`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import operator
import re
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml

from mmrl import registry
from mmrl.errors import ConfigError

T = TypeVar("T")

Rule = tuple[str, bool, str]
"""One rule of a class's `config_rules`: (field, whether it holds, what the field must be)."""


@dataclass
class NoGame:
    """The `game` section of a run without a game."""

    name: str = ""
    """A registered self-play game (`spy`) to train on instead of the task mixture; empty: no game."""


def plugin_schema(kind: str, name: str) -> type:
    """The dataclass of a plugin section: the `Config` of the registered plugin `name` of `kind`, or `NoGame`
    when `name` is empty."""
    if not name:
        return NoGame
    if not isinstance(name, str):
        raise ConfigError(f"config key '{kind}.name' must be a string, got {name!r}")
    return registry.lookup(kind, name).Config


# --------------------------------------------------------------------------------------------------
# Field docs


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each field of dataclass `cls` to the docstring written right under it in the source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "") -> str:
    """One line per field (nested dataclasses flattened as `a.b`): name, type, valid range, default, doc."""
    lines = []
    docs = field_docs(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        hint, spec = _split_range(hints[f.name])
        if dataclasses.is_dataclass(hint):
            lines.append(describe(hint, prefix + f.name + "."))
            continue
        if "plugin" in f.metadata:  # the section without a plugin, then each installed plugin's schema
            lines.append(describe(plugin_schema(f.metadata["plugin"], ""), prefix + f.name + "."))
            for name in registry.names(f.metadata["plugin"]):
                lines.append(f"  with {prefix}{f.name}.name={name}:")
                lines.append(describe(plugin_schema(f.metadata["plugin"], name), prefix + f.name + "."))
            continue
        kind = _type_name(hint)
        if spec:
            kind += f", {'each ' if typing.get_origin(hint) is tuple else ''}{_requirement(spec)}"
        lines.append(f"  {prefix}{f.name} ({kind}, default {_default_of(f)!r}): {docs.get(f.name, '')}")
        item = (typing.get_args(hint) or (None,))[0]
        if typing.get_origin(hint) is list and dataclasses.is_dataclass(item):
            lines.append(describe(item, prefix + f.name + ".<i>."))
    return "\n".join(lines)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


# --------------------------------------------------------------------------------------------------
# Loading


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build a `cls` instance from defaults, then the YAML file at `path`, then `a.b=c` overrides, and
    check it (`validate_config`).

    Override values are parsed as YAML scalars/lists (`train.lr=1e-6`, `data.tasks=[a,b]`).
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
    config = _build(cls, data, source)
    for item in overrides or []:
        apply_override(config, item)
    validate_config(config)
    return config


def from_dict(cls: type[T], data: dict[str, Any], source: str = "", prefix: str = "") -> T:
    """Build `cls` from a nested dict, validating keys, value types and ranges."""
    config = _build(cls, data, source, prefix)
    validate_config(config, prefix)
    post_init = getattr(config, "__post_init__", None)
    if post_init is not None:  # `_build` set the given values after construction: the class's own checks
        post_init()  # (a task's Params) and normalisation must see them
    return config


def _build(cls: type[T], data: dict[str, Any], source: str, prefix: str = "") -> T:
    """`cls` from a nested dict with keys and value types checked; ranges are left to `validate_config`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source)}'{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    # Defaults first, then the given values: a class's own `__post_init__` checks would report a bad value
    # without its section, where `validate_config` names the full key.
    config = cls()
    plugins = _plugin_fields(cls)
    for key, value in data.items():
        if key not in names:
            raise ConfigError(_unknown_key_message(f"{prefix}{key}", key, names, source))
        hint = hints[key]
        if key in plugins:  # the section's schema is the Config of the plugin its `name` picks
            if not isinstance(value or {}, dict):
                raise ConfigError(f"{_where(source)}'{prefix}{key}' must be a mapping, got {value!r}")
            schema = plugin_schema(plugins[key], (value or {}).get("name", ""))
            setattr(config, key, _build(schema, value or {}, source, f"{prefix}{key}."))
        elif dataclasses.is_dataclass(hint):
            setattr(config, key, _build(hint, value or {}, source, f"{prefix}{key}."))
        else:
            setattr(config, key, _coerce(value, hint, f"{prefix}{key}", source))
    return config


def apply_override(config: Any, item: str) -> None:
    """Apply one `a.b=c` override to `config` in place.

    Keys address list items by index (`data.sources.1.weight=2`) and keys of dict fields
    (`data.sources.0.params.rows=3`); the value is parsed as YAML.
    """
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value (e.g. model.max_pixels=200704)")
    dotted, raw = item.split("=", 1)
    *path, last = dotted.strip().split(".")
    if len(path) == 1 and last == "name" and path[0] in _plugin_fields(type(config)):
        _switch_plugin(config, path[0], _parse_value(raw), item)
        return
    target, hint = config, type(config)
    for depth, part in enumerate(path):
        slot, hint = _override_slot(target, hint, part, path[:depth], item)
        target = _member(target, slot)
    slot, hint = _override_slot(target, hint, last, path, item)
    if dataclasses.is_dataclass(hint):
        raise ConfigError(f"override '{item}' sets a whole section; set one of its keys instead")
    value = _coerce(_parse_value(raw), hint, dotted, "override")
    if dataclasses.is_dataclass(target):
        setattr(target, slot, value)
    else:
        target[slot] = value


def _parse_value(raw: str) -> Any:
    """An override's value, parsed as YAML (`1e-6`, `[a, b]`, `{k: v}`); unparsable text stays a string."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _switch_plugin(config: Any, key: str, name: Any, item: str) -> None:
    """`game.name=spy`: the section takes the named plugin's schema, keeping the values both schemas share."""
    old = getattr(config, key)
    section = plugin_schema(_plugin_fields(type(config))[key], name)()
    shared = {f.name for f in dataclasses.fields(section)} & {f.name for f in dataclasses.fields(old)} - {"name"}
    for field_name in shared:
        setattr(section, field_name, getattr(old, field_name))
    if name:
        section.name = name
    setattr(config, key, section)


def _plugin_fields(cls: type) -> dict[str, str]:
    """Fields of `cls` whose schema a plugin supplies (field metadata `plugin`: the registry kind)."""
    return {f.name: f.metadata["plugin"] for f in dataclasses.fields(cls) if "plugin" in f.metadata}


def _override_slot(target: Any, hint: Any, part: str, path: list[str], item: str) -> tuple[Any, Any]:
    """Where the key `part` of override `item` points inside `target` (the section, list or dict at
    `path`), and the annotation of what it points to."""
    if dataclasses.is_dataclass(target):
        names = [f.name for f in dataclasses.fields(target)]
        if part not in names:
            message = _unknown_key_message(".".join([*path, part]), part, names, "override")
            if isinstance(target, NoGame):
                message += "; a game's keys exist once it is named: set game.name first (installed games: "
                message += f"{', '.join(registry.names('game')) or 'none'})"
            raise ConfigError(message)
        if part in _plugin_fields(type(target)):
            return part, type(getattr(target, part))  # the section's current schema
        return part, typing.get_type_hints(type(target))[part]
    if isinstance(target, list):
        if not (part.isdigit() and int(part) < len(target)):
            valid = ", ".join(map(str, range(len(target)))) or "none, the list is empty"
            raise ConfigError(f"override '{item}': '{'.'.join(path)}' has no item '{part}' (valid indices: {valid})")
        return int(part), (typing.get_args(hint) or (Any,))[0]
    if isinstance(target, dict):
        return part, (typing.get_args(hint) or (Any, Any))[1]
    raise ConfigError(f"override '{item}': '{'.'.join(path)}' is not a section")


def _member(container: Any, slot: Any) -> Any:
    """Field, list item or dict value `slot` of `container` (None for a key a dict lacks)."""
    if dataclasses.is_dataclass(container):
        return getattr(container, slot)
    return container.get(slot) if isinstance(container, dict) else container[slot]


# --------------------------------------------------------------------------------------------------
# Ranges


def validate_config(config: Any, prefix: str = "") -> None:
    """Raise `ConfigError` for the first value of `config` (a config dataclass, its sections and list items
    included) that is out of its declared range, a NaN or infinite float, not one of its `Literal` choices,
    or breaks a rule of its class's `config_rules`. The message names the key: `prefix` + the field."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), prefix + f.name
        hint, spec = _split_range(hints[f.name])
        item = (typing.get_args(hint) or (None,))[0]
        if dataclasses.is_dataclass(hint) or "plugin" in f.metadata:
            validate_config(value, key + ".")
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(item):
            for index, element in enumerate(value):
                validate_config(element, f"{key}.{index}.")
        else:
            _check_value(value, hint, spec, key)
    rules: list[Rule] = config.config_rules() if hasattr(config, "config_rules") else []
    for name, holds, requirement in rules:
        if not holds:
            value = operator.attrgetter(name)(config)
            raise ConfigError(f"config key '{prefix}{name}' must be {requirement}, got {value!r}")


def _check_value(value: Any, hint: Any, spec: str | None, key: str) -> None:
    if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
        raise ConfigError(f"config key '{key}' must be one of {list(typing.get_args(hint))}, got {value!r}")
    arity = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and Ellipsis not in arity and len(value) != len(arity):
        raise ConfigError(f"config key '{key}' expects {_type_name(hint)}, got {value!r}")
    requirement = _requirement(spec) if spec else ""
    several = isinstance(value, tuple)
    for number in value if several else (value,):
        finite = not isinstance(number, float) or math.isfinite(number)
        if finite and (spec is None or _range_test(spec)(number)):
            continue
        want = f"numbers each {requirement}" if several else requirement
        if not finite:
            want = f"a finite number {want}".rstrip()
        raise ConfigError(f"config key '{key}' must be {want}, got {value!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The field annotations of `cls`, ranges included (`Annotated[int, ">= 1"]`)."""
    return typing.get_type_hints(cls, include_extras=True)


def _split_range(hint: Any) -> tuple[Any, str | None]:
    """(`int`, `">= 1"`) for `Annotated[int, ">= 1"]`; (hint, None) for a hint without a range."""
    if typing.get_origin(hint) is Annotated:
        base, spec = typing.get_args(hint)[:2]
        return base, spec
    return hint, None


_COMPARISONS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@functools.cache
def _range_test(spec: str) -> Callable[[float], bool]:
    """The test of a range written as a comparison (`> 0`, `>= 1`, `<= 1`) or an interval (`[0, 1)`)."""
    if match := re.fullmatch(r"([<>]=?) (\S+)", spec):
        compare, bound = _COMPARISONS[match[1]], float(match[2])
        return lambda v: compare(v, bound)
    if match := re.fullmatch(r"([\[(])(\S+), (\S+)([\])])", spec):
        low, high = float(match[2]), float(match[3])
        above = operator.ge if match[1] == "[" else operator.gt
        below = operator.le if match[4] == "]" else operator.lt
        return lambda v: above(v, low) and below(v, high)
    raise ValueError(f"unreadable range {spec!r}: write a comparison such as `>= 1` or an interval such as `[0, 1)`")


def _requirement(spec: str) -> str:
    """A range as messages and `--help` word it: `> 0`, `in [0, 1)`."""
    return spec if spec[0] in "<>" else f"in {spec}"


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts/lists (for saving next to a run)."""
    return _plain(dataclasses.asdict(config))


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _where(source: str) -> str:
    return f"{source}: " if source else ""


def _unknown_key_message(dotted: str, key: str, valid: list[str], source: str) -> str:
    hint = difflib.get_close_matches(key, valid, n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    return f"{_where(source)}unknown config key '{dotted}'{suggestion}; valid keys here: {', '.join(valid)}"


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `hint`, converting where lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    def fail() -> ConfigError:
        return ConfigError(f"{_where(source)}config key '{key}' expects {_type_name(hint)}, got {value!r}")

    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):  # e.g. the items of `data.sources`
        return _build(hint, value, source, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise fail()
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{_where(source)}config key '{key}' must be one of {list(args)}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-6` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail()
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `run.name=42` is a string the user meant
        raise fail()
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise fail()
            return tuple(_coerce(v, a, key, source) for v, a in zip(value, args))
        item = args[0] if args else Any
        keys = [f"{key}.{i}" if dataclasses.is_dataclass(item) else key for i in range(len(value))]
        items = [_coerce(v, item, k, source) for v, k in zip(value, keys)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise fail()
        return dict(value)
    return value


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + "|".join(map(str, typing.get_args(hint)))
    if typing.get_origin(hint) is not None:
        return str(hint).replace("typing.", "").replace("mmrl.config.", "")
    return getattr(hint, "__name__", None) or str(hint)


__all__ = [
    "NoGame",
    "Rule",
    "apply_override",
    "describe",
    "field_docs",
    "from_dict",
    "load_config",
    "plugin_schema",
    "save_config",
    "to_dict",
    "validate_config",
]
