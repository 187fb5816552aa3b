"""Per-call work FastMCP does that this server does not need, cut without leaving its runner.

Every trim here keeps FastMCP's own machinery (its ``call_tool``, middleware chain, ``Context``,
argument validation, result conversion) and replaces one internal step with the same result
computed more directly. Each uses names FastMCP does not publish, so each is **pinned** to the
FastMCP version it was checked against (:data:`PINNED_FASTMCP`): with any other version the
trims stand aside and FastMCP's own code runs, and ``tests/test_mcpauth_fastmcp_trims.py``
fails until someone re-reads FastMCP's code and moves the pin.

* **One provider, one lookup** (:meth:`SingleProviderLookup._get_tool`). FastMCP asks every
  provider for a tool concurrently: an anyio task group and a task per provider, per call
  (``AggregateProvider._get_tool`` over ``fastmcp.utilities.async_utils.gather``), then keeps
  the highest version. The platform's server is sealed with exactly one provider, its local
  one (:class:`~mcpauth.runtime.server.GovernedServer`), so the answer is that provider's
  answer: asked inline, with the same error handling and the same component ``auth`` check.
  About 0.27 M instructions of a 4.7 M-instruction call (``make bench``'s instructions phase).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import fastmcp
from fastmcp.exceptions import NotFoundError
from fastmcp.server import server as fastmcp_server

if TYPE_CHECKING:
    from fastmcp.tools import Tool
    from fastmcp.utilities.versions import VersionSpec

log = logging.getLogger(__name__)

#: The FastMCP release whose private names the trims were checked against.
PINNED_FASTMCP = "4.2.3"


def active() -> bool:
    """Whether the installed FastMCP is the pinned one (else FastMCP's own code runs)."""
    return fastmcp.__version__ == PINNED_FASTMCP


class SingleProviderLookup:
    """A FastMCP server mixin: a tool lookup over a single provider asks it directly."""

    providers: list[Any]

    if TYPE_CHECKING:  # FastMCP's AggregateProvider implements it

        def _raises_on_provider_error(self) -> bool: ...

    async def _get_tool(self, name: str, version: VersionSpec | None = None) -> Tool | None:
        """``FastMCP._get_tool`` for one provider: ``AggregateProvider._get_tool`` keeps the
        highest version of the providers' answers (a ``NotFoundError`` counts as none, any other
        error is raised or logged as the server is configured), then FastMCP drops a tool whose
        own ``auth`` check refuses the request."""
        if len(self.providers) != 1 or not active():
            return await super()._get_tool(name, version)  # type: ignore[misc, no-any-return]
        provider = self.providers[0]
        try:
            tool: Tool | None = await provider.get_tool(name, version)
        except NotFoundError:
            return None
        except Exception as exc:
            if self._raises_on_provider_error():
                raise
            log.warning(f"Error during get_tool({name!r}) from provider {provider}: {exc}")
            return None
        if tool is None:
            return None
        allowed = await fastmcp_server._component_auth_allows(tool)
        return tool if allowed else None
