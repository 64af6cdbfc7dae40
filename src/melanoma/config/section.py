"""What every params section is built from: strict scalars, the section decorator, the shared rules.

A section is a frozen pydantic dataclass that forbids unknown keys: ``dataclasses.asdict``,
``replace``, ``fields`` and keyword construction work as on any dataclass, and construction
validates too, raising the same ``ConfigError`` as loading params.yaml.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, ConfigDict, Strict, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError

from melanoma.config.messages import explain
from melanoma.errors import ConfigError

# Strict scalars: YAML's "100" is not an int, 1.5 is not an int, true is not a number; an int is a
# fine float (converted). Lists stay lax so that YAML lists become tuples.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]

_T = TypeVar("_T")


def distinct(what: str) -> AfterValidator:
    """A list field's rule that no entry repeats: ``Annotated[tuple[...], distinct("column")]``."""

    def check(value: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"must not repeat a {what}")
        return value

    return AfterValidator(check)


def rule(key: str, requirement: str, got: Any) -> PydanticCustomError:
    """A failed rule of a section validator about its field ``key`` (dotted below the section)."""
    return PydanticCustomError(
        "param_rule", "{requirement}", {"field": key, "requirement": requirement, "got": got}
    )


def section(cls: type[_T]) -> type[_T]:
    """A frozen pydantic dataclass that forbids unknown keys and raises ConfigError when built badly."""
    cls = pydantic_dataclass(cls, frozen=True, config=ConfigDict(extra="forbid"))
    init = cls.__init__

    # Loading validates through the schema (no __init__ call); this covers direct construction
    # (tests, benchmarks, library callers), so a bad value is a ConfigError wherever it comes from.
    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise ConfigError(explain(exc, cls, f"invalid {cls.__name__}")) from None

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls
