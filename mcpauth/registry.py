"""The tool registry: which governed tools exist, what each one needs, and where it came from.

Apps contribute tools the way they contribute ``admin.py``: a module ``<app>/mcp.py`` that
decorates functions with :func:`tool`. :func:`autodiscover` (run by ``mcpauth``'s
``AppConfig.ready``) imports that module of every installed app, so adding an app with tools
takes no edit outside it except ``INSTALLED_APPS``::

    # notes/mcp.py
    from mcpauth import current_principal, tool

    @tool(permissions=["notes.view_note"], read_only=True)
    async def search_notes(query: str, limit: int = 20) -> list[dict]:
        ...

The decorator only records a :class:`ToolSpec` and returns the function unchanged, so the
function stays an ordinary function (importable, testable, usable by plain FastMCP).
``mcpauth.server`` builds the one FastMCP server from the registry; the governance layer reads
each tool's permissions from it. Two tools with one name are a startup error
(``mcpauth.E006``), as are malformed permissions (``mcpauth.E007``) and a name outside the MCP
tool-name alphabet (``mcpauth.E009``, :func:`is_tool_name`, which ``/mcp`` applies to requests).
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from mcpauth.tokens import Principal

F = TypeVar("F", bound=Callable[..., Any])

#: The longest tool name here: the audit row's ``tool`` column (the MCP spec allows 128).
MAX_TOOL_NAME = 100
#: What a tool name is, for the registry (``mcpauth.E009``) and for ``/mcp`` requests alike:
#: the MCP tool-name alphabet (2025-11-25 spec, "Tool names"; the SDK's ``TOOL_NAME_REGEX``):
#: ASCII letters, digits, ``_``, ``-`` and ``.``, 1 to ``MAX_TOOL_NAME`` characters.
TOOL_NAME_RE = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_TOOL_NAME}}}")


def is_tool_name(value: object) -> bool:
    """Whether ``value`` can name a tool on this server (see :data:`TOOL_NAME_RE`)."""
    return isinstance(value, str) and TOOL_NAME_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class ToolSpec:
    """One governed tool, as declared by ``@tool``."""

    name: str
    fn: Callable[..., Any] = field(repr=False)
    #: Django permissions (``app_label.codename``) the caller must hold, all of them.
    permissions: tuple[str, ...]
    #: A read-only tool changes nothing: no transaction around it, ``readOnlyHint``.
    read_only: bool = False
    #: MCP ``destructiveHint``; nothing is destructive unless it says so.
    destructive: bool | None = None
    #: MCP ``idempotentHint``, when declared.
    idempotent: bool | None = None
    #: Overrides the docstring as the tool's description.
    description: str | None = None
    #: The module that declared it (``todos.mcp``), for error messages and the admin.
    module: str = ""

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    @property
    def annotations(self) -> dict[str, bool]:
        """The MCP tool annotations, following exactly what was declared."""
        hints = {"readOnlyHint": self.read_only}
        if not self.read_only:
            hints["destructiveHint"] = bool(self.destructive)
        if self.idempotent is not None:
            hints["idempotentHint"] = self.idempotent
        return hints


class ToolRegistry:
    """Tools by name. A second tool with a taken name is kept aside for the system check."""

    def __init__(self) -> None:
        self._tools: dict[str, ToolSpec] = {}
        #: ``(first, second)`` for every name registered twice (reported by ``mcpauth.E006``).
        self.duplicates: list[tuple[ToolSpec, ToolSpec]] = []
        self._lock = threading.Lock()

    def register(self, spec: ToolSpec) -> None:
        with self._lock:
            existing = self._tools.get(spec.name)
            if existing is None:
                self._tools[spec.name] = spec
            elif existing.fn is not spec.fn:  # re-importing the same module is harmless
                self.duplicates.append((existing, spec))

    def unregister(self, name: str) -> None:
        with self._lock:
            self._tools.pop(name, None)
            self.duplicates = [d for d in self.duplicates if d[0].name != name]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __getitem__(self, name: str) -> ToolSpec:
        return self._tools[name]

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def get(self, name: str) -> ToolSpec | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def visible_to(self, principal: Principal) -> set[str]:
        """The tools ``principal`` may call (all of their permissions held)."""
        return {s.name for s in self._tools.values() if principal.has_perms(s.permissions)}

    def permissions_in_use(self) -> set[str]:
        """Every permission some tool requires."""
        return {p for s in self._tools.values() for p in s.permissions}

    def tools_needing(self, permissions: Iterable[str]) -> list[str]:
        """The tools whose every permission is in ``permissions`` (what a grant unlocks)."""
        granted = set(permissions)
        return sorted(
            s.name for s in self._tools.values() if s.permissions and set(s.permissions) <= granted
        )


#: The platform's registry, filled by ``@tool`` during autodiscovery.
registry = ToolRegistry()


def _permissions(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError("@tool(permissions=...) takes a list of 'app_label.codename' strings")
    perms = tuple(value)
    if not all(isinstance(p, str) for p in perms):
        raise TypeError("@tool(permissions=...) takes a list of 'app_label.codename' strings")
    return perms


@overload
def tool(fn: F, /) -> F: ...
@overload
def tool(
    fn: None = None,
    /,
    *,
    permissions: Iterable[str] = (),
    read_only: bool = False,
    destructive: bool | None = None,
    idempotent: bool | None = None,
    name: str | None = None,
    description: str | None = None,
) -> Callable[[F], F]: ...
def tool(
    fn: F | None = None,
    /,
    *,
    permissions: Iterable[str] = (),
    read_only: bool = False,
    destructive: bool | None = None,
    idempotent: bool | None = None,
    name: str | None = None,
    description: str | None = None,
) -> F | Callable[[F], F]:
    """Register ``fn`` as a governed MCP tool; return it unchanged.

    ``permissions``: the Django permissions a caller needs (checked before the tool runs, and
    tools the caller may not call are hidden from ``tools/list``). ``read_only``: the tool
    changes nothing. ``destructive``/``idempotent``: MCP hints, sent only as declared. ``name``
    and ``description`` default to the function's name and docstring. Works on sync and async
    functions; a sync tool's writes, result and audit row commit in one transaction.
    """
    perms = _permissions(permissions)

    def decorator(func: F) -> F:
        if not callable(func):
            raise TypeError("@tool decorates a function")
        registry.register(
            ToolSpec(
                name=name or func.__name__,
                fn=func,
                permissions=perms,
                read_only=bool(read_only),
                destructive=destructive,
                idempotent=idempotent,
                description=description,
                module=getattr(func, "__module__", "") or "",
            )
        )
        return func

    if fn is not None:
        return decorator(fn)
    return decorator


def autodiscover() -> None:
    """Import ``<app>/mcp.py`` of every installed app (as ``admin.autodiscover`` does)."""
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("mcp")
