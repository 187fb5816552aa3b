"""Governed resources and prompts: ``@resource`` and ``@prompt``, next to ``@tool``.

Both decorators record a spec in the registry (:mod:`mcpauth.runtime.registry`) and return the
function unchanged; ``mcpauth.runtime.server`` turns every spec into FastMCP's own component (a
resource, a resource template or a prompt, made from a governed wrapper with the function's
signature), so FastMCP validates the arguments and converts the result exactly as it would for the
bare function. What governance adds is the same as for tools: the caller must hold every permission
(else 403 with an ``insufficient_scope`` step-up challenge), the lists show only what the caller
may use, the body runs as the caller (``current_principal()``, ``Model.objects.current()``), and
each read or get leaves exactly one audit row.

::

    @resource("notes://{note_id}", permissions=["notes.view_note"])
    def note(note_id: int) -> str: ...

    @prompt(permissions=["notes.view_note"])
    def summarize_notes(topic: str) -> str: ...

A URI with ``{parameters}`` (RFC 6570, as FastMCP supports them) is a resource template.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from mcpauth.runtime.registry import registry
from mcpauth.runtime.specs import (  # re-exported: the specs lived here
    PromptSpec,
    ResourceSpec,
    normalize_uri,
    permissions_of,
)

__all__ = [
    "PromptSpec",
    "ResourceSpec",
    "fastmcp_prompt",
    "fastmcp_resource",
    "normalize_uri",
    "permissions_of",
    "prompt",
    "resource",
    "uri_for_audit",
]

F = TypeVar("F", bound=Callable[..., Any])


def resource(
    uri: str,
    /,
    *,
    permissions: Iterable[str] = (),
    name: str | None = None,
    title: str | None = None,
    description: str | None = None,
    mime_type: str | None = None,
    annotations: dict[str, Any] | None = None,
) -> Callable[[F], F]:
    """Register the decorated function as a governed MCP resource; return it unchanged.

    ``uri``: the resource's URI, or an RFC 6570 template (``notes://{note_id}``,
    ``notes://search{?query}``) whose parameters are the function's arguments.
    ``permissions``: the Django permissions a reader needs (checked before the body runs;
    ``resources/list`` and ``resources/templates/list`` hide what the caller may not read).
    ``name``, ``title``, ``description``, ``mime_type`` and ``annotations`` are FastMCP's.
    A str result is text, bytes a blob, anything else JSON; sync and async functions work.
    """
    if not isinstance(uri, str):
        raise TypeError("@resource takes the URI first: @resource('notes://{note_id}', ...)")
    perms = permissions_of(permissions, "@resource")

    def decorator(fn: F) -> F:
        if not callable(fn):
            raise TypeError("@resource decorates a function")
        registry.resources.register(
            ResourceSpec(
                uri=uri,
                fn=fn,
                permissions=perms,
                name=name,
                title=title,
                description=description,
                mime_type=mime_type,
                annotations=dict(annotations) if annotations is not None else None,
                module=getattr(fn, "__module__", "") or "",
            )
        )
        return fn

    return decorator


@overload
def prompt(fn: F, /) -> F: ...
@overload
def prompt(
    fn: None = None,
    /,
    *,
    permissions: Iterable[str] = (),
    name: str | None = None,
    title: str | None = None,
    description: str | None = None,
) -> Callable[[F], F]: ...
def prompt(
    fn: F | None = None,
    /,
    *,
    permissions: Iterable[str] = (),
    name: str | None = None,
    title: str | None = None,
    description: str | None = None,
) -> F | Callable[[F], F]:
    """Register the decorated function as a governed MCP prompt; return it unchanged.

    Its arguments are the prompt's arguments (FastMCP converts the strings MCP sends); it
    returns a str (one user message), a list of ``fastmcp.prompts.Message`` or str, or a
    ``PromptResult``. ``permissions`` as for ``@tool``: ``prompts/list`` hides what the caller
    may not get. ``name`` and ``description`` default to the function's name and docstring.
    """
    perms = permissions_of(permissions, "@prompt")

    def decorator(func: F) -> F:
        if not callable(func):
            raise TypeError("@prompt decorates a function")
        registry.prompts.register(
            PromptSpec(
                name=name or func.__name__,
                fn=func,
                permissions=perms,
                title=title,
                description=description,
                module=getattr(func, "__module__", "") or "",
            )
        )
        return func

    if fn is not None:
        return decorator(fn)
    return decorator


def fastmcp_resource(spec: ResourceSpec, fn: Callable[..., Any] | None = None) -> Any:
    """FastMCP's resource or resource template for ``spec``, made from ``fn`` (its governed
    wrapper; the bare function by default), by FastMCP's own rule: a URI or a function with
    parameters is a template. Raises what FastMCP raises for a declaration it refuses."""
    from fastmcp.resources import Resource, ResourceTemplate
    from fastmcp.server.dependencies import without_injected_parameters
    from mcp_types import Annotations

    fn = spec.fn if fn is None else fn
    options: dict[str, Any] = {
        "name": spec.name,
        "title": spec.title,
        "description": spec.description,
        "mime_type": spec.mime_type,
        "annotations": Annotations(**spec.annotations) if spec.annotations else None,
    }
    if spec.is_template or inspect.signature(without_injected_parameters(fn)).parameters:
        return ResourceTemplate.from_function(fn=fn, uri_template=spec.uri, **options)
    return Resource.from_function(fn=fn, uri=spec.uri, **options)


def fastmcp_prompt(spec: PromptSpec, fn: Callable[..., Any] | None = None) -> Any:
    """FastMCP's prompt for ``spec``, made from ``fn`` (the bare function by default)."""
    from fastmcp.prompts import Prompt

    return Prompt.from_function(
        spec.fn if fn is None else fn,
        name=spec.name,
        title=spec.title,
        description=spec.description,
    )


def uri_for_audit(uri: str, limit: int) -> str:
    """What an audit row keeps of a requested resource URI: scheme, host and path, never the
    query, the fragment or user information (where identifiers and secrets travel), with
    secret-shaped text scrubbed, cut to ``limit`` characters."""
    from urllib.parse import urlsplit

    from audit.redaction import scrub_text

    text = uri.split("#", 1)[0].split("?", 1)[0]
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = None
    if parts is not None and parts.netloc and "@" in parts.netloc:
        text = text.replace(parts.netloc, parts.netloc.rsplit("@", 1)[1], 1)
    text = scrub_text(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
