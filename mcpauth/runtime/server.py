"""The platform's one MCP server: FastMCP, built from the registry once app loading is over.

:func:`get_server` builds it once per process, after every app's ``mcp.py`` was discovered:
each :class:`~mcpauth.runtime.registry.ToolSpec` becomes a FastMCP tool made from its
:class:`~mcpauth.runtime.runner.GovernedTool` function (same signature, so FastMCP derives the same
input and output schemas it would for the bare function), with the declared annotations; each
:class:`~mcpauth.runtime.components.ResourceSpec` a FastMCP resource or resource template, each
:class:`~mcpauth.runtime.components.PromptSpec` a FastMCP prompt, made the same way. The server
advertises the resources and prompts capabilities only when some are registered. Building it
before app loading has finished (``get_server()`` at import time in an app's ``mcp.py``) raises
:class:`ServerBuiltTooEarly`; once built it takes no more components
(:class:`GovernedServer`). No app builds a FastMCP instance of its own (``mcpauth.E031``), and
``config`` only composes the ASGI app.

:class:`Governance` is the FastMCP middleware that ties FastMCP's runner to the call's
``Principal`` and audit row:

* ``tools/list``, ``resources/list``, ``resources/templates/list`` and ``prompts/list`` show
  only what the caller may use, and only what the registry governs;
* ``resources/read`` and ``prompts/get`` reach FastMCP only for a registered resource or prompt
  the caller may use (the ASGI layer has already answered 403 otherwise): anything else is
  FastMCP's own not-found error;
* arguments FastMCP refuses are answered with the field and the problem only, never an
  argument's value (FastMCP's own message quotes ``input_value``), and audited as
  ``invalid_request``;
* anything else that fails before the body ran is audited (the body's outcomes are the
  runner's to record).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from fastmcp import FastMCP
from fastmcp.exceptions import AuthorizationError, NotFoundError, ToolError
from fastmcp.exceptions import ValidationError as ArgumentsInvalid
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools import FunctionTool
from fastmcp.utilities.types import get_cached_typeadapter

from audit.models import Outcome
from mcpauth.conf import get_settings
from mcpauth.runtime import request_state
from mcpauth.runtime.arguments import describe_invalid_arguments, failed_argument, schema_keys
from mcpauth.runtime.components import PromptSpec, ResourceSpec, fastmcp_prompt, fastmcp_resource
from mcpauth.runtime.context import get_call
from mcpauth.runtime.fastmcp_trims import SingleProviderLookup
from mcpauth.runtime.registry import ToolRegistry, registry
from mcpauth.runtime.runner import (
    INTERNAL_MESSAGE,
    GovernedPrompt,
    GovernedResource,
    GovernedTool,
    arecord,
)

log = logging.getLogger(__name__)


def _refusal(exc: BaseException, kind: str, keys: Iterable[str]) -> tuple[str, str, str]:
    """``(outcome, error_code, audit message)`` for a read or get that failed before its body.

    FastMCP masks what failed while it prepared the arguments (a template parameter or a prompt
    argument that does not convert) as its own error, caused by the original exception.
    """
    if isinstance(exc, NotFoundError):
        return Outcome.INVALID_REQUEST, f"unknown_{kind}", f"Unknown {kind}."
    if isinstance(exc, AuthorizationError):
        return Outcome.DENIED, "insufficient_scope", f"The caller may not use this {kind}."
    if isinstance(exc, ArgumentsInvalid) or isinstance(exc.__cause__, ValueError | TypeError):
        message = describe_invalid_arguments(exc, keys, failed_argument(exc))
        return Outcome.INVALID_REQUEST, "invalid_arguments", message
    return Outcome.SERVER_ERROR, type(exc).__name__, INTERNAL_MESSAGE


class Governance(Middleware):
    """FastMCP middleware: visibility, the last check before a body, and the audit of calls
    refused before the body ran."""

    def __init__(self, tool_registry: ToolRegistry) -> None:
        self.registry = tool_registry
        #: tool name -> the property names of its input schema (for safe error locations)
        self.schema_keys: dict[str, frozenset[str]] = {}
        #: FastMCP component key (``resource:…@``, ``template:…@``, ``prompt:…@``) -> its spec
        self.specs: dict[str, ResourceSpec | PromptSpec] = {}
        #: resource URI / template or prompt name -> its argument names
        self.argument_keys: dict[str, frozenset[str]] = {}

    async def on_list_tools(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Sequence[Any]:
        tools = await call_next(context)
        call = get_call()
        if call is None or call.principal is None:
            return []  # fail closed: no caller, no tools
        allowed = self.registry.visible_to(call.principal)
        return [t for t in tools if t.name in allowed]

    def _governed(self, components: Sequence[Any]) -> list[Any]:
        """The components the current caller may use; none without a caller, none ungoverned."""
        call = get_call()
        if call is None or call.principal is None:
            return []
        principal = call.principal
        return [
            c
            for c in components
            if (spec := self.specs.get(c.key)) is not None and principal.has_perms(spec.permissions)
        ]

    async def on_list_resources(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Sequence[Any]:
        return self._governed(await call_next(context))

    async def on_list_resource_templates(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Sequence[Any]:
        return self._governed(await call_next(context))

    async def on_list_prompts(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Sequence[Any]:
        return self._governed(await call_next(context))

    async def check_resource_access(self, context: MiddlewareContext[Any]) -> None:
        """A registered resource the caller may read, or FastMCP's not-found / denial."""
        call = get_call()
        spec = self.registry.resources.resolve(str(context.message.uri))
        if spec is None or call is None or call.principal is None:
            raise NotFoundError("Unknown resource.")
        if not call.principal.has_perms(spec.permissions):
            raise AuthorizationError("Access denied to resource.")

    async def on_read_resource(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        try:
            await self.check_resource_access(context)
            return await call_next(context)
        except Exception as exc:
            spec = self.registry.resources.resolve(str(context.message.uri))
            keys = self.argument_keys.get(spec.uri, frozenset()) if spec else frozenset()
            replacement = await self._refused(exc, "resource", keys)
            if replacement is exc:
                raise
            raise replacement from None

    async def on_get_prompt(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        name = str(context.message.name)
        try:
            call = get_call()
            spec = self.registry.prompts.get(name)
            if spec is None or call is None or call.principal is None:
                raise NotFoundError(f"Unknown prompt: {name!r}")
            if not call.principal.has_perms(spec.permissions):
                raise AuthorizationError("Access denied to prompt.")
            return await call_next(context)
        except Exception as exc:
            replacement = await self._refused(exc, "prompt", self.argument_keys.get(name, ()))
            if replacement is exc:
                raise
            raise replacement from None

    async def _refused(self, exc: Exception, kind: str, keys: Iterable[str]) -> Exception:
        """Record a read or get that failed before its body ran; what to raise to FastMCP."""
        call = get_call()
        if call is None or call.recorded or call.tool_ran:
            return exc  # the body's outcome was recorded by the runner
        outcome, code, message = _refusal(exc, kind, keys)
        await arecord(call, outcome, code=code, message=message)
        if code == "invalid_arguments":
            # the field and the problem, never the value (FastMCP's messages may quote it)
            return ArgumentsInvalid(message, log_level=logging.INFO)
        return exc

    async def on_call_tool(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        try:
            return await call_next(context)
        except Exception as exc:
            call = get_call()
            if call is None or call.recorded or call.tool_ran:
                raise  # the body's outcome was recorded by the runner
            name = str(getattr(context.message, "name", ""))
            if isinstance(exc, ArgumentsInvalid):
                message = describe_invalid_arguments(exc, self.schema_keys.get(name, ()))
                await arecord(
                    call, Outcome.INVALID_REQUEST, code="invalid_arguments", message=message
                )
                raise ToolError(message, log_level=logging.INFO) from None
            if isinstance(exc, NotFoundError):
                outcome, code, message = Outcome.INVALID_REQUEST, "unknown_tool", str(exc)
            elif isinstance(exc, ToolError):
                outcome, code, message = Outcome.TOOL_ERROR, type(exc).__name__, str(exc)
            else:
                outcome, code, message = Outcome.SERVER_ERROR, type(exc).__name__, INTERNAL_MESSAGE
            await arecord(call, outcome, code=code, message=message)
            raise


class ServerBuiltTooEarly(ImproperlyConfigured):
    """The MCP server was asked for before Django finished loading apps."""


class ServerSealed(ImproperlyConfigured):
    """A component was added to the MCP server after it was built (it would be ungoverned)."""


#: FastMCP's methods that add something to serve; a built :class:`GovernedServer` refuses them.
_ADDERS = (
    "add_tool",
    "tool",
    "add_resource",
    "add_template",
    "resource",
    "add_prompt",
    "prompt",
    "add_provider",
    "mount",
    "add_transform",
    "add_middleware",
    "add_completion_handler",
    "completion",
    "add_extension",
)


class GovernedServer(SingleProviderLookup, FastMCP[Any]):
    """FastMCP that takes nothing more once :func:`build_server` is done with it.

    Whatever is added to the platform's server directly (``get_server().add_resource(...)``,
    ``.mount(...)``, ``@get_server().prompt``) would be served without governance: it raises
    :class:`ServerSealed` instead, naming the decorators to use. Sealed, it has exactly one
    provider, so a tool lookup asks that provider directly (:mod:`mcpauth.runtime.fastmcp_trims`).
    """

    _sealed = False

    def seal(self) -> None:
        self._sealed = True


def _sealable(name: str) -> Any:
    original = getattr(FastMCP, name)

    @functools.wraps(original)
    def method(self: GovernedServer, *args: Any, **kwargs: Any) -> Any:
        if self._sealed:
            raise ServerSealed(
                f"The platform's MCP server is built: FastMCP.{name}() on it would serve "
                "something ungoverned. Declare tools, resources and prompts in an app's mcp.py "
                "with `from mcpauth import tool, resource, prompt`."
            )
        return original(self, *args, **kwargs)

    return method


for _name in _ADDERS:
    setattr(GovernedServer, _name, _sealable(_name))


#: The SDK's request methods of each capability: a server without resources (prompts) does not
#: serve them, so it does not advertise the capability (the SDK derives it from its handlers).
_RESOURCE_METHODS = (
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
)
_PROMPT_METHODS = ("prompts/list", "prompts/get")


def _require_apps_loaded() -> None:
    from django.apps import apps

    if not apps.ready:
        raise ServerBuiltTooEarly(
            "The MCP server was asked for before Django finished loading apps (for example "
            "get_server() at import time in an app's mcp.py). It is built once, from every "
            "app's mcp.py; built now, it would silently leave out whatever registers later. "
            "Register with `from mcpauth import tool, resource, prompt` in mcp.py and do not "
            "build or fetch the server there: mcpauth.asgi builds it after django.setup()."
        )


def build_server(tool_registry: ToolRegistry = registry) -> FastMCP[Any]:
    """A FastMCP server serving every tool, resource and prompt of ``tool_registry``, governed."""
    _require_apps_loaded()
    conf = get_settings()
    governance = Governance(tool_registry)
    state_policy = request_state.security(conf)
    server = GovernedServer(
        name=conf.resource_name,
        instructions=conf.instructions or None,
        mask_error_details=True,
        middleware=[governance],
        request_state_security=state_policy,
    )
    request_state.install(server._mcp_server, state_policy, conf)
    for spec in tool_registry:
        governed = GovernedTool(spec)
        tool = FunctionTool.from_function(
            governed.function(),
            name=spec.name,
            description=spec.description,
            annotations=spec.annotations,  # type: ignore[arg-type]
        )
        governed.bind(tool)
        server.add_tool(tool)
        governance.schema_keys[spec.name] = frozenset(schema_keys(tool.parameters))
    for resource_spec in tool_registry.resources:
        governed_resource = GovernedResource(resource_spec)
        resource = fastmcp_resource(resource_spec, governed_resource.function())
        governed_resource.bind(resource)
        server.add_resource(resource)
        governance.specs[resource.key] = resource_spec
        params = getattr(resource, "parameters", None) or {}
        governance.argument_keys[resource_spec.uri] = frozenset(schema_keys(params))
    for prompt_spec in tool_registry.prompts:
        governed_prompt = GovernedPrompt(prompt_spec)
        prompt = fastmcp_prompt(prompt_spec, governed_prompt.function())
        governed_prompt.bind(prompt)
        server.add_prompt(prompt)
        governance.specs[prompt.key] = prompt_spec
        governance.argument_keys[prompt_spec.name] = frozenset(
            {a.name for a in prompt.arguments or ()}
            | schema_keys(get_cached_typeadapter(prompt.fn).json_schema())
        )
    handlers = server._mcp_server._request_handlers
    for methods, registered in (
        (_RESOURCE_METHODS, len(tool_registry.resources)),
        (_PROMPT_METHODS, len(tool_registry.prompts)),
    ):
        if not registered:
            for method in methods:
                handlers.pop(method, None)
    server.seal()
    tool_registry.mark_served()
    return server


_server: FastMCP[Any] | None = None
_server_lock = threading.Lock()


def get_server() -> FastMCP[Any]:
    """The process's MCP server, built on first use (after app loading)."""
    global _server
    if _server is None:
        with _server_lock:
            if _server is None:
                _server = build_server()
    return _server
