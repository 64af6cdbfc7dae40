"""pydantic's validation errors as messages about params.yaml's dotted keys.

pydantic reports each failure with its location (``loc``: the keys and list indices from the
validated section down to the bad value), its type (``greater_than_equal``, ``literal_error``...),
the context of the rule (``ctx``: the bound, the accepted choices) and the ``input``. Every message
is built from those four: ``<dotted.key>: <what is wrong> (got <value>)``, e.g.
``prepare.image_size: must be >= 8 (got 4)``. ``_MUST`` words the types a YAML file meets in its
own terms (a list, not a tuple; true or false); any other type keeps pydantic's own message. An
unknown key names the nearest valid key and the keys that are valid beside it.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

_MUST = {
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "tuple_type": "must be a list",
    "dataclass_type": "must be a mapping",
    "literal_error": "must be one of {expected}",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "too_short": "must have at least {min_length} item{s}",
    "string_too_short": "must have at least {min_length} character{s}",
    "value_error": "{error}",  # a field validator's own words ("must not repeat a column")
    "param_rule": "{requirement}",  # a section validator's (config.section.rule), about ctx["field"]
}
_UNKNOWN_KEY = ("unexpected_keyword_argument", "extra_forbidden")


def _shown(value: Any) -> str:
    """A value as YAML spells it where that differs from Python (null, true, false)."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    return repr(value)


def _dotted(loc: tuple[Any, ...]) -> str:
    """``('cnn', 'filters', 1)`` -> ``cnn.filters[1]``."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key


def _keys(cls: type, prefix: str = "") -> Iterator[str]:
    """Every dotted key under section ``cls``, sections before their keys, in declaration order."""
    for name, info in cls.__pydantic_fields__.items():
        yield prefix + name
        if dataclasses.is_dataclass(info.annotation):
            yield from _keys(info.annotation, f"{prefix}{name}.")


def _unknown_key(root: type, loc: tuple[Any, ...]) -> str:
    """An unknown key: the nearest key beside it, else the same name elsewhere, and the keys beside it."""
    section, place = root, ""
    for part in loc[:-1]:
        info = section.__pydantic_fields__.get(part) if isinstance(part, str) else None
        if info is None or not dataclasses.is_dataclass(info.annotation):
            break
        section, place = info.annotation, f"{place}{part}."
    name, here = str(loc[-1]), list(section.__pydantic_fields__)
    close = [place + k for k in difflib.get_close_matches(name, here, n=1, cutoff=0.6)]
    if not close:  # the first place of a leaf name wins (base.seed before external.seed)
        leaves: dict[str, str] = {}
        for key in _keys(root):
            leaves.setdefault(key.rsplit(".", 1)[-1], key)
        close = [leaves[k] for k in difflib.get_close_matches(name, list(leaves), n=1, cutoff=0.8)]
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    where = f"in '{place.rstrip('.')}'" if place else "at the top level"
    return f"unknown key{hint}; known keys {where}: {', '.join(here)}"


def _describe(error: Any, root: type) -> str:
    """One pydantic error as ``<dotted.key>: <what is wrong> (got <value>)``."""
    loc, kind, ctx = tuple(error["loc"]), error["type"], dict(error.get("ctx") or {})
    names = list(root.__pydantic_fields__)
    if loc and isinstance(loc[0], int) and loc[0] < len(names):  # a positional argument
        loc = (names[loc[0]], *loc[1:])
    if kind in _UNKNOWN_KEY:
        return f"{_dotted(loc)}: {_unknown_key(root, loc)}"
    value = error.get("input")
    if kind == "param_rule":
        loc, value = loc + tuple(ctx["field"].split(".")), ctx["got"]
    ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
    ctx["s"] = "" if ctx.get("min_length") == 1 else "s"
    if kind in _MUST:
        words = _MUST[kind].format(**ctx)
    else:  # e.g. "Got multiple values for argument" (direct construction)
        words = error["msg"].replace("Input should", "must", 1)
        words = words[:1].lower() + words[1:]
    got = _shown(value)
    if kind == "literal_error" and not isinstance(value, str) and repr(str(value)) in ctx["expected"]:
        got += f"; quote it in YAML: '{value}'"
    key = _dotted(loc)
    return f"{key}: {words} (got {got})" if key else f"{words} (got {got})"


def explain(exc: ValidationError, root: type, source: str) -> str:
    """Every problem of ``exc`` (raised validating section ``root``), under the heading ``source``."""
    errors = exc.errors()
    # A list whose items failed also reports its length after validation: the items say it better.
    bad_items = {tuple(e["loc"][:-1]) for e in errors if e["loc"] and isinstance(e["loc"][-1], int)}
    kept = [
        e for e in errors if not (e["type"] in ("too_short", "too_long") and tuple(e["loc"]) in bad_items)
    ]
    lines = list(dict.fromkeys(_describe(e, root) for e in kept))
    if len(lines) == 1:
        return f"{source}: {lines[0]}"
    return f"{source}: {len(lines)} problems:\n" + "\n".join(f"  - {line}" for line in lines)
