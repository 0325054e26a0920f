"""Command-line overrides checked against the configured callables' signatures.

``apply_override(cfg, "trainer.max_steps", "30")`` walks the path through the
config graph, checks every name against the owning class's parameters (with
ranked suggestions for typos), parses the value against the parameter's
annotation (so ``str`` fields need no quoting and ``int`` fields refuse
``'8'``), then writes it with Fiddle's ``set_value_at_path``.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import re
import types
import typing
from typing import Any

import fiddle as fdl
from fiddle import absl_flags as fdl_flags

from xlafw.config.errors import ConfigError, suggest

_PATH_TOKEN = re.compile(r"\.?([A-Za-z_]\w*)|\[(-?\d+)\]|\[('[^']*'|\"[^\"]*\")\]")
_NO_VALUE = object()


@dataclasses.dataclass(frozen=True)
class _Attr:
    name: str


@dataclasses.dataclass(frozen=True)
class _Index:
    key: Any


def parse_path(path: str) -> list[_Attr | _Index]:
    """Splits ``a.b[0].c['k']`` into attribute and index steps."""
    steps, pos = [], 0
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)
        if not m or (pos == 0 and path.startswith(".")):
            raise ConfigError(f"cannot parse the path {path!r} at {path[pos:]!r}")
        name, index, key = m.groups()
        steps.append(
            _Attr(name) if name else _Index(int(index) if index else ast.literal_eval(key))
        )
        pos = m.end()
    if not steps:
        raise ConfigError("an override needs a path, as in trainer.max_steps=30")
    return steps


def owner_name(buildable: fdl.Buildable) -> str:
    fn = fdl.get_callable(buildable)
    return getattr(fn, "__qualname__", repr(fn))


def parameters(buildable: fdl.Buildable) -> tuple[dict[str, inspect.Parameter], bool]:
    """Returns the named parameters of a buildable's callable and whether it takes **kwargs."""
    signature = buildable.__signature_info__.signature
    named = {
        n: p
        for n, p in signature.parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    return named, takes_kwargs


def annotations(buildable: fdl.Buildable) -> dict[str, Any]:
    """Resolved type hints of the buildable's callable; {} when they cannot be resolved."""
    fn = fdl.get_callable(buildable)
    target = fn if not inspect.isclass(fn) or dataclasses.is_dataclass(fn) else fn.__init__
    try:
        return typing.get_type_hints(target)
    except Exception:
        return {}


def type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def parse_value(raw: str, tp: Any) -> Any:
    """Parses a command-line string as a value of type ``tp``.

    Raises:
      ValueError: with the expected type when ``raw`` does not fit.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is _NO_VALUE:
        return _literal(raw, tp)
    if origin in (typing.Union, types.UnionType):
        if raw.strip().lower() in ("none", "null") and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(raw, arg)
            except ValueError:
                continue
        raise ValueError(f"expected {type_name(tp)}")
    if origin is typing.Literal:
        for option in args:
            if raw == str(option) or (not isinstance(option, str) and _try_literal(raw) == option):
                return option
        raise ValueError(f"expected one of {', '.join(repr(a) for a in args)}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if raw.lower() in (member.name.lower(), str(member.value).lower()):
                return member
        raise ValueError(f"expected one of {', '.join(m.value for m in tp)} ({tp.__name__})")
    if tp is bool:
        low = raw.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError("expected bool (true or false)")
    if tp is int:
        value = _try_literal(raw)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and "e" in raw.lower():
            return int(value)  # 1e6 for a step count
        raise ValueError("expected int")
    if tp is float:
        value = _try_literal(raw)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError("expected float")
    if tp is str:
        value = _try_literal(raw)
        return value if isinstance(value, str) else raw
    if origin in (tuple, list):
        value = _try_literal(raw)
        if not isinstance(value, (tuple, list)):
            value = tuple(v.strip() for v in raw.split(",")) if raw else ()
        if args and args[-1] is Ellipsis:
            items = [_coerce(v, args[0]) for v in value]
        elif args:
            if len(args) != len(value):
                raise ValueError(f"expected {type_name(tp)} ({len(args)} items)")
            items = [_coerce(v, a) for v, a in zip(value, args, strict=False)]
        else:
            items = list(value)
        return tuple(items) if origin is tuple else items
    return _literal(raw, tp)


def _coerce(value: Any, tp: Any) -> Any:
    return parse_value(value if isinstance(value, str) else repr(value), tp)


def _try_literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return _NO_VALUE


def _literal(raw: str, tp: Any) -> Any:
    value = _try_literal(raw)
    if value is _NO_VALUE:
        raise ValueError(
            "expected a Python literal; a string needs quotes here, and objects "
            "(callables, configs) are set with a --fiddler"
        )
    return value


def apply_override(cfg: fdl.Buildable, path: str, raw: str) -> None:
    """Sets ``path`` in ``cfg`` to ``raw`` parsed against the field's annotation.

    Raises:
      ConfigError: naming the path, the owning class and a fix.
    """
    shown = f"--fdl_set={path}={raw}"
    steps = parse_path(path)
    node: Any = cfg
    walked = ""
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if isinstance(step, _Index):
            try:
                node_value = node[step.key]
            except (KeyError, IndexError, TypeError):
                raise ConfigError(
                    f"{shown}: {walked or 'the config'} has no item [{step.key!r}]"
                ) from None
            if last:
                break
            node, walked = node_value, f"{walked}[{step.key!r}]"
            continue
        here = f"{walked}.{step.name}" if walked else step.name
        if not isinstance(node, fdl.Buildable):
            raise ConfigError(
                f"{shown}: {walked} is a plain value ({type(node).__name__}), not a config, "
                f"so it has no field {step.name!r}. Fix: set {walked} itself."
            )
        params, takes_kwargs = parameters(node)
        if step.name not in params and not takes_kwargs:
            prefix = f"{walked}." if walked else ""
            raise ConfigError(
                f"{shown}: {owner_name(node)} (at {walked or 'the top level'}) has no field "
                f"{step.name!r}.{suggest(step.name, params, prefix)} "
                f"Fields: {', '.join(params)}."
            )
        if last:
            _check_and_set(cfg, node, step.name, here, raw, shown, path)
            return
        node, walked = getattr(node, step.name), here
    fdl_flags.set_value_at_path(cfg, path, _literal(raw, Any))


def _check_and_set(root, owner, name, here, raw, shown, path) -> None:
    current = getattr(owner, name, None)
    if isinstance(current, fdl.Buildable):
        fields = ", ".join(parameters(current)[0])
        raise ConfigError(
            f"{shown}: {here} is a sub-config ({owner_name(current)}); set one of its "
            f"fields instead ({fields}), or replace it with a --fiddler."
        )
    tp = annotations(owner).get(name, _NO_VALUE)
    try:
        value = parse_value(raw, tp)
    except ValueError as e:
        raise ConfigError(
            f"{shown}: {owner_name(owner)}.{name} {e}, got {raw!r}. "
            f"Fix: pass a value of type {type_name(tp) if tp is not _NO_VALUE else 'literal'}."
        ) from None
    fdl_flags.set_value_at_path(root, path, value)
