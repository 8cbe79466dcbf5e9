"""Values typed by users: numbers as Python reads them, and ``KEY=VALUE`` syntax.

Cheap to import (no torch, no SAE-Lens): the commands check syntax with it before any
slow import. One conversion serves every place numbers are read (``--set``, sweep files,
``--config``, upstream flags of ``sae-lens train``, ``--bench-option``):

- a float field takes whatever Python's ``float()`` takes: ``1e-3``, ``5e+3``, ``1e9``,
  ``.5``, ``1_000.5`` (PyYAML reads YAML 1.1, where ``1e-3`` without a dot is a string);
- an integer field takes an integer, or a number in any of those spellings whose value is
  whole (``1e6``, ``2.0e+3``).
"""

from __future__ import annotations

import types
import typing
from typing import Any

from sae_lens_ext.errors import fail


class NotANumber(ValueError):
    """The value cannot be read as the number its field needs (the message says which)."""


def to_number(value: Any, kind: type) -> int | float:
    """``value`` (a number or a string) as ``kind`` (``int`` or ``float``), read as Python
    reads numbers; :class:`NotANumber` if it is not one (or, for ``int``, not whole)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise NotANumber(f"expected {_article(kind)}")
    text = value.strip() if isinstance(value, str) else value
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise NotANumber("expected a float (a number such as 0.5, 1e-3 or 2.5e+4)") from None
    if isinstance(text, int):
        return text
    if isinstance(text, str):
        try:
            return int(text, 10)
        except ValueError:
            pass
    try:
        number = float(text)
    except ValueError:
        raise NotANumber("expected an integer (a whole number such as 4096 or 1e6)") from None
    if not number.is_integer():
        raise NotANumber(f"expected an integer; {value} is not a whole number")
    return int(number)


def number_kind(annotation: Any) -> type | None:
    """``int`` or ``float`` when a field of type ``annotation`` holds one number (``float``,
    ``int``, ``float | None``...), else ``None`` (strings, lists, booleans...)."""
    if annotation in (int, float):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(kinds) == 1 and kinds[0] in (int, float):
            return kinds[0]
        if set(kinds) == {int, float}:
            return float
    return None


def coerce(value: Any, annotation: Any) -> Any:
    """``value`` converted to a number when ``annotation`` is a number type (see
    :func:`to_number`; ``None`` stays ``None``); anything else unchanged."""
    kind = number_kind(annotation)
    if kind is None or value is None:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return to_number(value, kind)


def field_types(cls: type) -> dict[str, Any]:
    """The type of every field of the dataclass ``cls`` (its defaults' types where an
    annotation cannot be resolved)."""
    import dataclasses
    from dataclasses import MISSING

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation naming something not importable here
        hints = {}
    return {
        f.name: hints.get(f.name, Any if f.default in (None, MISSING) else type(f.default))
        for f in dataclasses.fields(cls)
    }


def split_assignment(item: str, flag: str, example: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> ``(key, raw value)``; one line naming ``flag`` otherwise."""
    key, sep, raw = item.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise fail(f"{flag} {item!r}: expected {example}")
    return key, raw


def check_assignments(items: tuple[str, ...] | list[str], flag: str, example: str) -> None:
    """Every item of a repeatable ``KEY=VALUE`` option has that form (checked before any
    slow import, so that a typo is reported at once)."""
    for item in items:
        split_assignment(item, flag, example)


def _article(kind: type) -> str:
    return "an integer" if kind is int else "a float"
