"""Fair baseline for ``make bench``: plain FastMCP over the project's own todo services.

What a FastMCP user would write to serve the same todos from the same PostgreSQL database, with
none of the platform's governance, so that ``ours - fair`` is what governance costs a call:

* authentication is FastMCP's own :class:`JWTVerifier` (RS256 against the bench JWKS, ``iss``
  and ``aud`` checked), exactly as in ``bench/baseline_server.py``;
* scope checks are the quickstart's: ``todo:read`` / ``todo:write`` looked up in the access
  token's scopes inside each tool (a missing scope returns ``{"error": ...}``);
* the five tools call :mod:`todos.services`, the functions ours runs inside its governed
  bodies, so each call does the same database work as ours does for the tool itself:
  ``get_todo`` one ``SELECT``, ``create_todo`` one ``INSERT … RETURNING`` in autocommit (one
  durable commit), ``update_todo`` an ``UPDATE`` and a ``SELECT``, ``list_todos`` one
  ``SELECT``; FastMCP runs these sync tools in its worker threads (``anyio.to_thread``), each
  thread keeping its own Django connection (``CONN_MAX_AGE``);
* no rate limit, no audit row, no transaction around the call, no tenant binding, no
  per-request connection health check, no mcpauth registry, runner, middleware or transport.

**Django.** The module sets ``DJANGO_SETTINGS_MODULE=config.settings`` and calls
``django.setup()`` with the environment ours gets (``DEBUG=0``, ``DATABASE_URL`` …), so the
ORM, the connection options (server-side binding, ``CONN_MAX_AGE``) and the models are ours.
Installing the project's apps also installs mcpauth's per-connection execute wrapper for
row-level security; outside a governed body no tenant is bound, so it compares one attribute
per statement and never switches the connection: the connection stays the login role, which the
restrictive policy does not apply to, and sees the same rows as ours (``bench/load.py``'s
``db_check`` verifies a seeded read and a counted insert before every load).

**Tenant.** The services take a principal and confine every statement to its tenant in the
SQL (``WHERE tenant_id = …``); with no tenant bound they need no context, only the principal.
The fair server uses one fixed tenant, the bench tenant's row (``BENCH_TENANT_PK``), as a
single-tenant FastMCP app would, and builds a principal per call from the verified token:
subject, client id, scopes, and the permissions the scopes stand for.

Configuration (set by ``bench/run.py``): ``BENCH_JWKS_URL``, ``BENCH_ISSUER``,
``BENCH_AUDIENCE``, ``BENCH_BASE_URL``, ``BENCH_TENANT_PK`` and ours' Django environment
(``DATABASE_URL``, ``SECRET_KEY``, ``DEBUG=0``, ...).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # uvicorn --app-dir bench puts bench/ first, not the project
    sys.path.insert(1, _ROOT)

import django  # noqa: E402

django.setup()

from django.apps import apps  # noqa: E402
from django.db import connection  # noqa: E402
from fastmcp import FastMCP  # noqa: E402
from fastmcp.server.auth.providers.jwt import JWTVerifier  # noqa: E402
from fastmcp.server.dependencies import AccessToken, get_access_token  # noqa: E402

# The services' argument type: the only mcpauth import here (a leaf module of value types).
from mcpauth.values import Principal, TenantRef  # noqa: E402
from todos import services  # noqa: E402

#: What each quickstart scope lets a caller do, in the services' permission names.
SCOPE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "todo:read": ("todos.view_todo",),
    "todo:write": ("todos.add_todo", "todos.change_todo", "todos.delete_todo"),
}
#: What the services raise for a caller's mistake: returned as ``{"error": ...}``.
TOOL_ERRORS = (services.NotFound, services.InvalidInput, services.PermissionDenied)


def _bench_tenant() -> TenantRef:
    """The bench tenant's row, read once at start-up (then the connection is closed)."""
    pk = int(os.environ["BENCH_TENANT_PK"])
    row = apps.get_model("mcpauth", "Tenant").objects.values("external_id", "issuer").get(pk=pk)
    connection.close()  # the main thread's; tools run in worker threads with their own
    return TenantRef(id=pk, external_id=row["external_id"], issuer=row["issuer"])


TENANT = _bench_tenant()

verifier = JWTVerifier(
    jwks_uri=os.environ["BENCH_JWKS_URL"],
    issuer=os.environ["BENCH_ISSUER"],
    audience=os.environ["BENCH_AUDIENCE"],
    algorithm="RS256",
    base_url=os.environ.get("BENCH_BASE_URL") or None,
)

mcp = FastMCP("Todo Server", auth=verifier)


def _caller(scope: str) -> Principal | str:
    """The caller as the services take it, or the quickstart's error if ``scope`` is missing."""
    token: AccessToken | None = get_access_token()
    if token is None or scope not in token.scopes:
        return f"Insufficient permissions: `{scope}` scope required."
    return Principal(
        client_id=token.client_id,
        subject=str(token.claims.get("sub") or token.client_id),
        tenant=TENANT,
        scopes=frozenset(token.scopes),
        permissions=frozenset(p for s in token.scopes for p in SCOPE_PERMISSIONS.get(s, ())),
        token_id=str(token.claims.get("jti") or ""),
        issuer=str(token.claims.get("iss") or ""),
    )


@mcp.tool
def create_todo(title: str, description: str | None = None) -> dict[str, Any]:
    """Create a new todo item."""
    caller = _caller("todo:write")
    if isinstance(caller, str):
        return {"error": caller}
    try:
        return {"todo": services.create_todo(caller, title=title, description=description)}
    except TOOL_ERRORS as exc:
        return {"error": str(exc)}


@mcp.tool
def list_todos(
    completed: bool | None = None, limit: int | None = None, cursor: str | None = None
) -> dict[str, Any]:
    """List todos, newest first, optionally filtering by completion state. Paginated."""
    caller = _caller("todo:read")
    if isinstance(caller, str):
        return {"error": caller}
    try:
        return services.list_todos(caller, completed=completed, limit=limit, cursor=cursor)
    except TOOL_ERRORS as exc:
        return {"error": str(exc)}


@mcp.tool
def get_todo(todo_id: str) -> dict[str, Any]:
    """Fetch a single todo by its identifier."""
    caller = _caller("todo:read")
    if isinstance(caller, str):
        return {"error": caller}
    try:
        return {"todo": services.get_todo(caller, todo_id)}
    except TOOL_ERRORS as exc:
        return {"error": str(exc)}


@mcp.tool
def update_todo(
    todo_id: str,
    title: str | None = None,
    description: str | None = None,
    completed: bool | None = None,
) -> dict[str, Any]:
    """Update fields on an existing todo."""
    caller = _caller("todo:write")
    if isinstance(caller, str):
        return {"error": caller}
    try:
        todo = services.update_todo(
            caller, todo_id, title=title, description=description, completed=completed
        )
    except TOOL_ERRORS as exc:
        return {"error": str(exc)}
    return {"todo": todo}


@mcp.tool
def delete_todo(todo_id: str) -> dict[str, Any]:
    """Remove a todo."""
    caller = _caller("todo:write")
    if isinstance(caller, str):
        return {"error": caller}
    try:
        return {"deleted": services.delete_todo(caller, todo_id)}
    except TOOL_ERRORS as exc:
        return {"error": str(exc)}


app = mcp.http_app(path="/mcp", stateless_http=True, json_response=True)
