"""Argument checks of the typed builders, and the error they raise.

Every builder an experiment configures (the settings dataclasses, the mesh,
sharding and remat policies, model configs, the optimizer, schedules, data
sources, tokenizers and pipelines) checks its own arguments where they are
declared, in ``__post_init__`` or ``__init__``, and raises ``InvalidArgument``
naming the field, the value, the allowed range and the fix. The validation
pass (``xlafw.config.validation``) makes every builder of an experiment before
anything runs and prefixes each error with the builder's config path, so a
user reads ``optimizer.betas=(0.9, 1.0): must be ...`` and exit status 2.

A check here returns an ``InvalidArgument`` or None, so a builder can run all
of its checks and report every bad argument at once with ``raise_invalid``::

    def __post_init__(self):
        raise_invalid(
            integer("keep_last", self.keep_last, at_least=1, fix="keep at least one"),
            text("directory", self.directory),
        )

This module imports nothing of xlafw, so every builder can use it.
"""

from __future__ import annotations

import functools
import math
import string
import typing
from collections.abc import Collection, Mapping
from typing import Any

# NumPy's legacy seeding (np.random.seed, datasets' shuffles) takes 0..2**32-1.
SEED_MAX = 2**32 - 1
# Step counts are float32 device scalars (the optimizer's count, the schedule's
# input), exact up to 2**24: past it a count would stop advancing.
MAX_STEPS = 2**24
# The largest finite float32: learning rates and similar scalars live on the device
# as float32 tensors, where anything larger is inf.
FLOAT32_MAX = 3.4028234663852886e38


def show(value: Any) -> str:
    """A value as messages print it: strings quoted (so blanks show), others plainly."""
    return repr(value) if isinstance(value, str) else str(value)


class InvalidArgument(ValueError):
    """A builder's argument is outside what the builder accepts.

    Attributes:
      field: the argument's name (``keep_last``), or a dotted path below it
        (``source.split``) when the problem is in a nested value.
      value: the value given.
      message: what is allowed and the fix, as a sentence. Other arguments of
        the same builder it mentions are written ``{name}`` and listed in
        ``related``, so that ``described`` can name them by their config path.
      related: the other arguments ``message`` mentions as ``{name}``.
    """

    def __init__(self, field: str, value: Any, message: str, related: tuple[str, ...] = ()):
        self.field = field
        self.value = value
        self.message = message
        self.related = related
        super().__init__(self.described())

    def described(self, prefix: str = "") -> str:
        """``PREFIXfield=value: message``, related arguments named with ``prefix`` too."""
        message = self.message
        for name in self.related:
            message = message.replace(f"{{{name}}}", f"{prefix}{name}")
        return f"{prefix}{self.field}={show(self.value)}: {message}"

    @property
    def errors(self) -> tuple[InvalidArgument, ...]:
        """Every bad argument this error reports (just itself)."""
        return (self,)


class InvalidArguments(InvalidArgument):
    """Several arguments of one builder are invalid; ``errors`` lists them."""

    def __init__(self, errors: Collection[InvalidArgument]):
        self._errors = tuple(e for error in errors for e in error.errors)
        first = self._errors[0]
        super().__init__(first.field, first.value, first.message, first.related)
        self.args = ("; ".join(str(e) for e in self._errors),)

    @property
    def errors(self) -> tuple[InvalidArgument, ...]:
        return self._errors


def raise_invalid(*errors: InvalidArgument | None) -> None:
    """Raises the errors found (one ``InvalidArgument``, or ``InvalidArguments``); else nothing."""
    found = [e for e in errors if e is not None]
    if len(found) == 1:
        raise found[0]
    if found:
        raise InvalidArguments(found)


def _fix(fix: str) -> str:
    return f" Fix: {fix}" if fix else ""


def _bounds(low, low_open: bool, high, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def integer(
    field: str,
    value: Any,
    *,
    at_least: int | None = None,
    at_most: int | None = None,
    allow_none: bool = False,
    fix: str = "",
) -> InvalidArgument | None:
    """``value`` is an int (not a bool) within ``[at_least, at_most]`` (or None if allowed)."""
    if value is None and allow_none:
        return None
    in_range = is_int(value) and (at_least is None or value >= at_least)
    if in_range and (at_most is None or value <= at_most):
        return None
    if at_least is not None and at_most is not None:
        wanted = f"an integer from {at_least} to {at_most}"
    elif at_least is not None:
        wanted = f"an integer >= {at_least}"
    elif at_most is not None:
        wanted = f"an integer <= {at_most}"
    else:
        wanted = "an integer"
    return InvalidArgument(field, value, f"must be {wanted}.{_fix(fix)}")


def number(
    field: str,
    value: Any,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    allow_none: bool = False,
    fix: str = "",
) -> InvalidArgument | None:
    """``value`` is a finite int or float within the given bounds (or None if allowed)."""
    if value is None and allow_none:
        return None
    low, low_open = (above, True) if above is not None else (at_least, False)
    high, high_open = (below, True) if below is not None else (at_most, False)
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (low is None or (value > low if low_open else value >= low))
        and (high is None or (value < high if high_open else value <= high))
    )
    if ok:
        return None
    bounds = _bounds(low, low_open, high, high_open)
    return InvalidArgument(
        field, value, f"must be a finite number{' ' + bounds if bounds else ''}.{_fix(fix)}"
    )


def one_of(
    field: str, value: Any, choices: Collection[Any], fix: str = ""
) -> InvalidArgument | None:
    """``value`` is one of ``choices``."""
    if any(value is c or (type(value) is type(c) and value == c) for c in choices):
        return None
    shown = ", ".join(show(c) for c in choices)
    return InvalidArgument(field, value, f"must be one of {shown}.{_fix(fix)}")


@functools.cache
def declared_choices(owner: type, field: str) -> tuple[Any, ...]:
    """The ``Literal[...]`` values (and None, if optional) ``owner`` annotates ``field`` with."""
    hint = typing.get_type_hints(owner)[field]
    literal = typing.get_origin(hint) is typing.Literal
    choices: list[Any] = []
    for option in [hint] if literal else typing.get_args(hint):  # a Literal, or a Union of one
        if typing.get_origin(option) is typing.Literal:
            choices += typing.get_args(option)
        elif option is type(None):
            choices.append(None)
    return tuple(choices)


def declared_choice(owner: object, field: str, fix: str = "") -> InvalidArgument | None:
    """``owner.field`` is one of the values its ``Literal`` annotation lists."""
    return one_of(field, getattr(owner, field), declared_choices(type(owner), field), fix)


def instance(
    field: str,
    value: Any,
    kind: type | tuple[type, ...],
    allow_none: bool = False,
    fix: str = "",
) -> InvalidArgument | None:
    """``value`` is an instance of ``kind`` (or None if allowed)."""
    if isinstance(value, kind) or (value is None and allow_none):
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = " or ".join(t.__name__ for t in kinds)
    return InvalidArgument(field, value, f"must be a {names}.{_fix(fix)}")


def text(field: str, value: Any, allow_none: bool = False, fix: str = "") -> InvalidArgument | None:
    """``value`` is a non-blank string without surrounding whitespace (or None if allowed)."""
    if (value is None and allow_none) or (
        isinstance(value, str) and value.strip() and value == value.strip()
    ):
        return None
    if not isinstance(value, str):
        problem = "must be a string"
    elif not value.strip():
        problem = "is empty or blank"
    else:
        problem = "has leading or trailing whitespace"
    return InvalidArgument(field, value, f"{problem}.{_fix(fix)}")


def texts(
    field: str, value: Any, *, allow_empty: bool = True, fix: str = ""
) -> InvalidArgument | None:
    """``value`` is a tuple of ``text`` strings (non-empty unless ``allow_empty``)."""
    if not isinstance(value, tuple):
        return InvalidArgument(field, value, f"must be a tuple of strings.{_fix(fix)}")
    if not value and not allow_empty:
        return InvalidArgument(field, value, f"is empty; give at least one.{_fix(fix)}")
    for item in value:
        if text(field, item) is not None:
            return InvalidArgument(
                field,
                value,
                f"holds {show(item)}, which is not a non-blank string without surrounding "
                f"whitespace.{_fix(fix)}",
            )
    return None


def template(
    field: str, value: Any, keys: Mapping[str, str], fix: str = ""
) -> InvalidArgument | None:
    """``value`` is ``text`` whose ``{placeholders}`` are all in ``keys`` (``str.format``)."""
    if problem := text(field, value, fix=fix):
        return problem
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        value.format(**keys)
    except (ValueError, KeyError, IndexError, AttributeError):
        used = None
    allowed = ", ".join(f"{{{k}}}" for k in keys)
    if used is None or not used <= set(keys):
        return InvalidArgument(
            field,
            value,
            f"is not a valid template: the only placeholder allowed is {allowed} (write "
            f"{{{{ and }}}} for literal braces).{_fix(fix)}",
        )
    return None
