"""What ``@resource`` and ``@prompt`` record: the resource and prompt specs.

A leaf of the registry: :mod:`mcpauth.runtime.registry` keeps these specs and
:mod:`mcpauth.runtime.components` (the decorators) makes them, so neither needs the other to define
them. Re-exported from :mod:`mcpauth.runtime.components`, where they used to live.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AnyUrl, TypeAdapter, UrlConstraints


def permissions_of(value: Any, decorator: str) -> tuple[str, ...]:
    """``permissions=`` as a tuple; a string or a non-string entry is a ``TypeError``."""
    message = f"{decorator}(permissions=...) takes a list of 'app_label.codename' strings"
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(message)
    perms = tuple(value)
    if not all(isinstance(p, str) for p in perms):
        raise TypeError(message)
    return perms


@functools.cache
def _uri_adapter() -> TypeAdapter[AnyUrl]:
    # the type of FastMCP's ``Resource.uri``
    return TypeAdapter(Annotated[AnyUrl, UrlConstraints(host_required=False)])


def normalize_uri(uri: str) -> str:
    """A concrete resource URI as FastMCP stores and compares it (``str(AnyUrl(uri))``).

    Raises ``ValueError`` for what is not a URI.
    """
    return str(_uri_adapter().validate_python(uri))


@dataclass(frozen=True)
class ResourceSpec:
    """One governed resource (a fixed URI) or resource template (a URI with ``{params}``)."""

    kind = "resource"

    #: The URI, or the RFC 6570 template, as declared.
    uri: str
    fn: Callable[..., Any] = field(repr=False)
    #: Django permissions (``app_label.codename``) the caller must hold, all of them.
    permissions: tuple[str, ...]
    name: str | None = None
    title: str | None = None
    description: str | None = None
    mime_type: str | None = None
    #: MCP resource annotations (``audience``, ``priority``), as FastMCP takes them.
    annotations: dict[str, Any] | None = None
    module: str = ""

    @property
    def is_template(self) -> bool:
        """FastMCP's rule: a URI with parameters is a template (a function with parameters
        and a URI without is refused by FastMCP: ``mcpauth.E030``)."""
        return "{" in self.uri and "}" in self.uri

    @property
    def key(self) -> str:
        """What makes it unique: the template as written, or the normalized URI."""
        if self.is_template:
            return self.uri
        try:
            return normalize_uri(self.uri)
        except ValueError:
            return self.uri  # not a URI at all: FastMCP refuses it (mcpauth.E030)

    def matches(self, uri: str) -> bool:
        """Whether this template matches ``uri``, by FastMCP's own matcher."""
        from fastmcp.resources.template import match_uri_template

        return self.is_template and match_uri_template(uri, self.uri) is not None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


@dataclass(frozen=True)
class PromptSpec:
    """One governed prompt."""

    kind = "prompt"

    name: str
    fn: Callable[..., Any] = field(repr=False)
    permissions: tuple[str, ...]
    title: str | None = None
    description: str | None = None
    module: str = ""

    @property
    def key(self) -> str:
        return self.name

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)
