"""What makes a source's record an item: an id and data that every store takes.

The store writes ``json.dumps(record.data, default=str)`` and the id into its database:
SQLite refuses text with a lone surrogate, PostgreSQL a NUL character, and ``json`` a
record nested past the recursion limit, a circular one, or a key that is a tuple. Each
would fail the whole chunk of items around it, or stop the run. :func:`check` finds them
first, so the record alone fails, with a message that names the problem (and the field,
when its name is safe to show), never the value: a line may hold a secret.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from uuid import UUID

__all__ = ["MAX_DEPTH", "MAX_ID_LENGTH", "IdSpec", "check", "missing_id"]

IdSpec = str | Callable[[Mapping[str, Any]], Any]

MAX_ID_LENGTH = 1_000
"""Longest item id, in characters."""
MAX_DEPTH = 100
"""Deepest nesting of objects and lists in a record (``{"a": [1]}`` is 2 deep)."""
_MAX_NODES = 10_000_000  # values in one record: bounds the check of a huge shared structure


def check(
    data: dict[str, Any], id_spec: IdSpec, *, text: bool = False
) -> tuple[str | None, str | None]:
    """The item id of ``data`` as a string, or why ``data`` cannot be an item.

    ``text``: the data is strings decoded from bytes, one level deep (a CSV row), so only a
    NUL can be wrong in it.
    """
    item_id, error = _item_id(data, id_spec)
    if error is None and (not text or any("\x00" in value for value in data.values())):
        error = _data_problem(data)
    if item_id is None or error is not None:
        return None, error or missing_id(id_spec)
    return item_id, None


# Characters no store takes: NUL (PostgreSQL text and jsonb refuse it) and lone surrogates
# (UTF-8 cannot encode them; JSON's "\ud800" and undecodable database text give them).
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
_FIELD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_ .:/@#-]{0,63}")  # fit to quote in a message


def _item_id(data: Mapping[str, Any], id_spec: IdSpec) -> tuple[str | None, str | None]:
    """The item id as a string, or why there is none."""
    if callable(id_spec):
        try:
            value = id_spec(data)
        except Exception as exc:  # the user's function: its message may quote the record
            return None, f"the id function raised {type(exc).__name__}"
    else:
        value = data.get(id_spec)
    if value is None or (isinstance(value, str) and value == ""):
        return None, missing_id(id_spec)
    if isinstance(value, bool):
        return None, "the id is true or false, not a string or a number"
    if isinstance(value, str):
        text = str.__str__(value)  # a plain str, whatever subclass the record used
    elif isinstance(value, int):
        if value.bit_length() > 4 * MAX_ID_LENGTH:  # str() of it would refuse, and be too long
            return None, f"the id is longer than {MAX_ID_LENGTH} characters"
        text = str(value)
    elif isinstance(value, float | Decimal):
        finite = value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)
        if not finite:
            return None, "the id is not a finite number"
        text = str(value)
    elif isinstance(value, UUID):
        text = str(value)
    else:
        return None, f"the id is {_kind(value)}, not a string or a number"
    if len(text) > MAX_ID_LENGTH:
        return None, f"the id is longer than {MAX_ID_LENGTH} characters"
    if found := _BAD_CHAR.search(text):
        return None, f"the id contains {_bad_char(found.group())}"
    return text, None


def missing_id(id_spec: IdSpec) -> str:
    name = id_spec if isinstance(id_spec, str) else "id function"
    return f"no id: field {name!r} is missing or empty"


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes"
    return f"a {type(value).__name__}"


def _bad_char(char: str) -> str:
    if char == "\x00":
        return "a NUL character"
    return "text that is not valid Unicode (a lone surrogate)"


def _data_problem(data: dict[str, Any]) -> str | None:
    """Why ``json.dumps(data, default=str)`` would fail or write what no store takes.

    Walked with a stack, not recursion, so a record nested thousands deep is refused, not a
    ``RecursionError``; a cycle is refused as too deep. Most records need no walk: when
    ``json.dumps`` (in C, fast) writes one that UTF-8 encodes, with no NUL and no more
    brackets than :data:`MAX_DEPTH`, there is nothing to find.
    """
    try:
        text = _JSON.encode(data)
        text.encode("utf-8")  # refuses a lone surrogate
    except Exception:  # that, too deep, circular, an odd key or value: the walk says which
        pass
    else:
        # json.dumps writes NUL as an escape; a literal "\u0000" in the text also matches,
        # and the walk then finds nothing, which is only slower.
        if text.count("[") + text.count("{") <= MAX_DEPTH and "\\u0000" not in text:
            return None
    try:
        return _walk(data)
    except Exception as exc:  # a user's mapping whose items() or __str__ raises
        return f"the record cannot be written as JSON ({type(exc).__name__})"


_JSON = json.JSONEncoder(ensure_ascii=False, default=str)  # as the store writes, but in UTF-8


def _walk(data: dict[str, Any]) -> str | None:
    stack: list[tuple[Any, int, str | None]] = [(data, 1, None)]
    nodes = 0
    while stack:
        value, depth, field = stack.pop()
        nodes += 1
        if nodes > _MAX_NODES:
            return f"the record holds more than {_MAX_NODES:,} values"
        if isinstance(value, str):
            if found := _BAD_CHAR.search(value):
                return _where(_bad_char(found.group()), field)
        elif isinstance(value, dict):
            if depth > MAX_DEPTH:
                return _where(f"nested deeper than {MAX_DEPTH} levels", field)
            for key, item in value.items():
                if isinstance(key, str):
                    if found := _BAD_CHAR.search(key):
                        return _where(f"a field name with {_bad_char(found.group())}", field)
                elif not (key is None or isinstance(key, int | float)):
                    return _where(f"a field name that is {_kind(key)}", field)
                elif isinstance(key, int) and _huge(key):
                    return _where("a field name that is a number too long to write", field)
                top = field if depth > 1 else _field_name(key)
                stack.append((item, depth + 1, top))
        elif isinstance(value, list | tuple):
            if depth > MAX_DEPTH:
                return _where(f"nested deeper than {MAX_DEPTH} levels", field)
            stack.extend((item, depth + 1, field) for item in value)
        elif value is None or isinstance(value, bool | float):
            pass
        elif isinstance(value, int):
            if _huge(value):
                return _where("a number too long to write", field)
        elif found := _BAD_CHAR.search(str(value)):  # written as its str() (default=str)
            return _where(_bad_char(found.group()), field)
    return None


def _huge(number: int) -> bool:
    # Python refuses to write an int of more than 4,300 digits (about 14,000 bits) as text.
    return number.bit_length() > 14_000


def _field_name(key: object) -> str | None:
    return key if isinstance(key, str) and _FIELD_NAME.fullmatch(key) else None


def _where(problem: str, field: str | None) -> str:
    return f"{problem} in field {field!r}" if field else problem
