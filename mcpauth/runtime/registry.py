"""The registry: which governed tools, resources and prompts exist, what each one needs.

Apps contribute them the way they contribute ``admin.py``: a module ``<app>/mcp.py`` that
decorates functions with :func:`tool`, :func:`~mcpauth.runtime.components.resource` or
:func:`~mcpauth.runtime.components.prompt`. :func:`autodiscover` (run by ``mcpauth``'s
``AppConfig.ready``) imports that module of every installed app, so adding an app takes no edit
outside it except ``INSTALLED_APPS``::

    # notes/mcp.py
    from mcpauth import current_principal, resource, tool

    @tool(permissions=["notes.view_note"], read_only=True)
    async def search_notes(query: str, limit: int = 20) -> list[dict]:
        ...

    @resource("notes://{note_id}", permissions=["notes.view_note"])
    def note(note_id: int) -> str:
        ...

The decorators only record a spec and return the function unchanged, so the function stays an
ordinary function (importable, testable, usable by plain FastMCP). ``mcpauth.runtime.server`` builds
the one FastMCP server from the registry, once app loading has finished; the governance layer reads
each component's permissions from it. Two tools (or prompts) with one name, or two resources
with one URI, are a startup error (``mcpauth.E006``), as are malformed permissions
(``mcpauth.E007``). An app's ``mcp.py`` that builds a FastMCP server of its own is reported by
``mcpauth.E031`` (nothing on it would be served). A name outside the MCP tool-name alphabet
is ``mcpauth.E009`` (:func:`is_tool_name`, which ``/mcp`` applies to requests).
"""

from __future__ import annotations

import inspect
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from mcpauth.runtime.specs import PromptSpec, ResourceSpec, permissions_of

if TYPE_CHECKING:
    from mcpauth.values import Principal

F = TypeVar("F", bound=Callable[..., Any])

#: The longest tool or prompt name: the audit row's ``tool`` column (the MCP spec allows 128).
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

    kind = "tool"

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
    def key(self) -> str:
        return self.name

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


S = TypeVar("S", ToolSpec, ResourceSpec, PromptSpec)


class LateRegistration(RuntimeWarning):
    """A tool, resource or prompt registered after the server was built (it is not served)."""


class _Specs(Generic[S]):
    """Specs by key (a name, or a resource's URI). A second spec with a taken key is kept aside
    for the system check (``mcpauth.E006``); the first one stays."""

    def __init__(self) -> None:
        self._specs: dict[str, S] = {}
        #: ``(first, second)`` for every key registered twice (reported by ``mcpauth.E006``).
        self.duplicates: list[tuple[S, S]] = []
        self._lock = threading.Lock()
        #: True once a server was built from this registry: what registers later is not served.
        self.served = False

    def register(self, spec: S) -> None:
        with self._lock:
            existing = self._specs.get(spec.key)
            if existing is None:
                self._specs[spec.key] = spec
                self._changed()
            elif existing.fn is not spec.fn:  # re-importing the same module is harmless
                self.duplicates.append((existing, spec))
        if self.served and existing is None:
            warnings.warn(
                f"MCP {spec.kind} {spec.key!r} ({spec.module}) was registered after the MCP "
                "server was built from this registry: it is not served. Declare it in an app's "
                "mcp.py, which mcpauth imports before it builds the server.",
                LateRegistration,
                stacklevel=3,
            )

    def unregister(self, key: str) -> None:
        with self._lock:
            self._specs.pop(key, None)
            self.duplicates = [d for d in self.duplicates if d[0].key != key]
            self._changed()

    def _changed(self) -> None:
        """Hook for derived lookups (called under the lock)."""

    def __contains__(self, key: object) -> bool:
        return key in self._specs

    def __getitem__(self, key: str) -> S:
        return self._specs[key]

    def __iter__(self) -> Iterator[S]:
        return iter(list(self._specs.values()))

    def __len__(self) -> int:
        return len(self._specs)

    def get(self, key: str) -> S | None:
        return self._specs.get(key)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def visible_to(self, principal: Principal) -> set[str]:
        """The keys of the specs ``principal`` may use (all of their permissions held)."""
        return {k for k, s in self._specs.items() if principal.has_perms(s.permissions)}


class ResourceRegistry(_Specs[ResourceSpec]):
    """Resources and resource templates by URI, resolved the way FastMCP resolves a read."""

    def __init__(self) -> None:
        super().__init__()
        self._concrete: dict[str, ResourceSpec] = {}
        self._templates: list[ResourceSpec] = []

    def _changed(self) -> None:
        specs = list(self._specs.values())
        self._concrete = {s.key: s for s in specs if not s.is_template}
        self._templates = [s for s in specs if s.is_template]

    def resolve(self, uri: str) -> ResourceSpec | None:
        """The spec FastMCP would serve ``uri`` from: the resource with exactly that URI, else
        the first registered template matching it (FastMCP's own matcher), else ``None``."""
        spec = self._concrete.get(uri)
        if spec is not None:
            return spec
        for template in self._templates:
            if template.matches(uri):
                return template
        return None


class PromptRegistry(_Specs[PromptSpec]):
    """Prompts by name."""


class ToolRegistry(_Specs[ToolSpec]):
    """The platform's registry: tools by name (iterating it yields the tools), and next to them
    :attr:`resources` (by URI) and :attr:`prompts` (by name)."""

    def __init__(self) -> None:
        super().__init__()
        self.resources = ResourceRegistry()
        self.prompts = PromptRegistry()
        #: ``(module, attribute)`` of every FastMCP server an app's ``mcp.py`` built itself
        #: (reported by ``mcpauth.E031``: nothing registered on it is served).
        self.foreign_servers: list[tuple[str, str]] = []

    def mark_served(self) -> None:
        """A server was built from this registry: later registrations warn (LateRegistration)."""
        self.served = self.resources.served = self.prompts.served = True

    def permissions_in_use(self) -> set[str]:
        """Every permission some tool, resource or prompt requires."""
        specs: list[Any] = [*self, *self.resources, *self.prompts]
        return {p for s in specs for p in s.permissions}

    def tools_needing(self, permissions: Iterable[str]) -> list[str]:
        """The tools whose every permission is in ``permissions`` (what a grant unlocks)."""
        granted = set(permissions)
        return sorted(s.name for s in self if s.permissions and set(s.permissions) <= granted)


#: The platform's registry, filled by the decorators during autodiscovery.
registry = ToolRegistry()


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
    perms = permissions_of(permissions, "@tool")

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
    """Import ``<app>/mcp.py`` of every installed app (as ``admin.autodiscover`` does).

    Also notes every FastMCP server such a module built for itself (``mcpauth.E031``).
    """
    from django.apps import apps
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("mcp")
    from fastmcp import FastMCP

    found = []
    for config in apps.get_app_configs():
        module = sys.modules.get(f"{config.name}.mcp")
        for attr, value in vars(module).items() if module is not None else ():
            if isinstance(value, FastMCP):
                found.append((module.__name__, attr))  # type: ignore[union-attr]
    registry.foreign_servers = found
