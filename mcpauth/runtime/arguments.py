"""What an invalid argument is called on the wire and in the audit row: the field and the
problem, never the value (pydantic's and FastMCP's own messages may quote the input)."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable
from typing import Any

import pydantic
import pydantic_core.core_schema

_KNOWN_ERROR_TYPES = frozenset(typing.get_args(pydantic_core.core_schema.ErrorType))
#: Error context keys whose values come from the input (``uuid_parsing``'s parser message,
#: a discriminated union's tag ...): such an error is reported by its type only.
_INPUT_CONTEXT_KEYS = frozenset({"error", "tag"})
_CUSTOM_ERROR_TYPES = frozenset({"value_error", "assertion_error"})


def schema_keys(schema: Any) -> set[str]:
    """Every property name an input schema defines, nested models and ``$defs`` included."""
    keys: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                keys.update(k for k in props if isinstance(k, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return keys


def describe_invalid_arguments(exc: BaseException, keys: Iterable[str], argument: str = "") -> str:
    """``Invalid arguments: <field>: <problem>; …`` without any argument value.

    A location names the argument and, inside it, the schema's own field names and list
    indexes; any other key (a key inside a ``dict`` argument is data) reads ``[key]``. The
    problem is pydantic's message for its built-in error types, unless that message is built
    from the input (then the error type only), and ``invalid value`` for custom validators.
    ``argument``: the one argument the error is about, when pydantic validated it alone.
    """
    cause = exc.__cause__ if isinstance(exc.__cause__, pydantic.ValidationError) else exc
    if not isinstance(cause, pydantic.ValidationError):
        return "Invalid arguments."
    known = set(keys)
    problems = []
    for err in cause.errors(include_url=False, include_input=False):
        loc = ((argument,) if argument else ()) + tuple(err.get("loc") or ())
        parts = []
        for i, part in enumerate(loc):
            if isinstance(part, int) or i == 0 or part in known:
                parts.append(str(part))
            else:
                parts.append("[key]")
        kind = str(err.get("type", ""))
        ctx = err.get("ctx") or {}
        if kind in _CUSTOM_ERROR_TYPES or kind not in _KNOWN_ERROR_TYPES:
            problem = "invalid value"
        elif _INPUT_CONTEXT_KEYS & set(ctx):
            problem = f"invalid value ({kind})"
        else:
            problem = str(err.get("msg", "invalid value"))
        problems.append(f"{'.'.join(parts) or 'arguments'}: {problem}")
    return "Invalid arguments: " + "; ".join(problems or ["invalid value"])


#: FastMCP's message when a prompt argument's string does not convert to the parameter's type
#: (it quotes the value; only the argument's name is kept).
_PROMPT_CONVERSION = re.compile(r"Could not convert argument '([A-Za-z_][A-Za-z0-9_]*)'")


def failed_argument(exc: BaseException) -> str:
    """The prompt argument FastMCP could not convert, named by its message, else ``""``."""
    match = _PROMPT_CONVERSION.match(str(exc))
    return match.group(1) if match else ""
