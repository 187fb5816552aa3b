"""@resource and @prompt in the registry, their checks, and a server that cannot lose or leak.

* the decorators return the function unchanged and record specs; resources resolve the way
  FastMCP resolves a read;
* ``mcpauth.E006``/``E007``/``E009``/``E030``/``E031`` for resources, prompts and an app's own
  FastMCP server, end to end with ``manage.py check`` and the ASGI startup
  (``tests/ownserver``);
* ``get_server()`` while apps load (``tests/early``) raises, saying what to do instead; the
  built server takes nothing more;
* capabilities follow what is registered.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from fastmcp import Client
from fastmcp.server.extensions import ServerExtension
from fastmcp.utilities.tasks import TASKS_EXTENSION_ID
from mcp import MCPError

from mcpauth import checks, prompt, resource
from mcpauth.runtime.components import PromptSpec, ResourceSpec, uri_for_audit
from mcpauth.runtime.registry import LateRegistration, ToolRegistry, ToolSpec, registry
from mcpauth.runtime.server import ServerBuiltTooEarly, ServerSealed, build_server, get_server

ROOT = Path(__file__).resolve().parent.parent


def run(settings: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings, "DEBUG": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


# --- the decorators and the registry ------------------------------------------------------------


def test_decorators_return_the_function_unchanged_and_record_specs() -> None:
    def text(item_id: str) -> str:
        return item_id

    async def greeting(name: str) -> str:
        return name

    with warnings.catch_warnings():  # the suite's server may be built already
        warnings.simplefilter("ignore", LateRegistration)
        assert resource("tmp://items/{item_id}", permissions=["zoo.view_exhibit"])(text) is text
        assert prompt(permissions=["zoo.view_exhibit"], name="tmp_greeting")(greeting) is greeting
        assert prompt(greeting) is greeting  # bare, named after the function
    try:
        spec = registry.resources["tmp://items/{item_id}"]
        assert (spec.fn, spec.permissions, spec.is_template) == (
            text,
            ("zoo.view_exhibit",),
            True,
        )
        assert registry.prompts["tmp_greeting"].is_async and registry.prompts["greeting"]
    finally:
        registry.resources.unregister("tmp://items/{item_id}")
        registry.prompts.unregister("tmp_greeting")
        registry.prompts.unregister("greeting")


def test_wrong_arguments_fail_at_decoration() -> None:
    with pytest.raises(TypeError):
        resource(lambda: "x")  # type: ignore[arg-type]  # the URI comes first
    with pytest.raises(TypeError):
        resource("tmp://x", permissions="zoo.view_exhibit")
    with pytest.raises(TypeError):
        prompt(permissions=[1])  # type: ignore[list-item]


def test_resources_resolve_as_fastmcp_reads_them() -> None:
    local = ToolRegistry().resources

    def fn() -> str:
        return ""

    specs = [
        ResourceSpec(uri="http://example.com", fn=fn, permissions=()),
        ResourceSpec(uri="zoo://a/{x}", fn=fn, permissions=()),
        ResourceSpec(uri="zoo://{y}/{z}", fn=fn, permissions=()),  # also matches zoo://a/b
        ResourceSpec(uri="zoo://a/fixed", fn=fn, permissions=()),
        ResourceSpec(uri="zoo://search{?q}", fn=fn, permissions=()),
    ]
    for spec in specs:
        local.register(spec)
    assert local.resolve("http://example.com/") is specs[0]  # AnyUrl's form, as FastMCP's
    assert local.resolve("http://example.com") is None
    assert local.resolve("zoo://a/b") is specs[1]  # the first template registered
    assert local.resolve("zoo://c/d") is specs[2]
    assert local.resolve("zoo://a/fixed") is specs[3]  # a fixed URI wins over templates
    assert local.resolve("zoo://search?q=x") is specs[4]
    assert local.resolve("zoo://nothing") is None


def test_uri_for_audit_keeps_no_query_fragment_user_info_or_secret() -> None:
    assert uri_for_audit("zoo://search?q=secret#frag", 100) == "zoo://search"
    assert uri_for_audit("https://bob:pw@host.example/a?token=x", 100) == "https://host.example/a"
    scrubbed = uri_for_audit("files://keys/ghp_" + "a" * 30, 100)
    assert "ghp_" not in scrubbed and scrubbed.startswith("files://keys/")
    assert uri_for_audit("zoo://" + "x" * 200, 100) == "zoo://" + "x" * 93 + "\u2026"


def test_resource_and_prompt_problems_are_check_errors() -> None:
    local = ToolRegistry()

    def first() -> str:
        return ""

    def second() -> str:
        return ""

    def needs_other(other: str) -> str:
        return other

    def positional(x: str, /) -> str:
        return x

    local.resources.register(ResourceSpec(uri="zoo://x", fn=first, permissions=("a.b",)))
    local.resources.register(ResourceSpec(uri="zoo://x", fn=second, permissions=("a.b",)))
    local.resources.register(ResourceSpec(uri="zoo://y", fn=first, permissions=("nodot",)))
    local.resources.register(ResourceSpec(uri="zoo://{id}", fn=needs_other, permissions=()))
    local.prompts.register(PromptSpec(name="same", fn=first, permissions=()))
    local.prompts.register(PromptSpec(name="same", fn=second, permissions=()))
    local.prompts.register(PromptSpec(name="p" * 101, fn=first, permissions=()))
    local.prompts.register(PromptSpec(name="positional", fn=positional, permissions=()))
    local.foreign_servers = [("app.mcp", "mcp")]
    messages = checks.tool_messages(local)
    assert sorted(m.id for m in messages) == [
        "mcpauth.E006",
        "mcpauth.E006",
        "mcpauth.E007",
        "mcpauth.E009",
        "mcpauth.E030",
        "mcpauth.E030",
        "mcpauth.E031",
    ]
    assert all(m.is_serious() and m.hint for m in messages)
    assert local.resources["zoo://x"].fn is first  # the first registration is kept


def test_an_apps_own_fastmcp_server_and_broken_declarations_stop_check_and_startup() -> None:
    """End to end: tests/ownserver/mcp.py builds FastMCP itself and declares broken things."""
    proc = run("tests.settings_ownserver", "manage.py", "check")
    assert proc.returncode != 0
    err = proc.stderr
    assert "mcpauth.E031" in err and "tests.ownserver.mcp builds a FastMCP server" in err
    assert "from mcpauth import tool, resource, prompt" in err  # the hint says what to use
    assert "mcpauth.E030" in err and "own://items/{item_id}" in err
    assert "mcpauth.E007" in err and "'not a permission'" in err
    assert "Two MCP prompts are named 'summarize_notes'" in err
    assert "Two MCP resources have the URI 'notes://recent'" in err
    startup = run("tests.settings_ownserver", "-c", "import config.asgi")
    assert startup.returncode != 0 and "mcpauth.E031" in startup.stderr


# --- no silent loss, no ungoverned additions ----------------------------------------------------


def test_get_server_while_apps_load_fails_loudly_with_what_to_do() -> None:
    proc = run("tests.settings_early", "manage.py", "check")
    assert proc.returncode != 0
    assert "ServerBuiltTooEarly" in proc.stderr
    assert "before Django finished loading apps" in proc.stderr
    assert "from mcpauth import tool, resource, prompt" in proc.stderr
    assert issubclass(ServerBuiltTooEarly, Exception)


def test_the_built_server_takes_nothing_more() -> None:
    server = get_server()

    def extra() -> str:
        return "ungoverned"

    for attempt in (
        lambda: server.add_tool(extra),
        lambda: server.tool(extra),
        lambda: server.resource("extra://x")(extra),
        lambda: server.add_prompt(extra),
        lambda: server.prompt(extra),
        lambda: server.mount(build_server(ToolRegistry())),
        lambda: server.add_extension(Tasks()),
    ):
        with pytest.raises(ServerSealed, match="from mcpauth import tool, resource, prompt"):
            attempt()


class Tasks(ServerExtension):
    """Stands for the tasks extension (``fastmcp-tasks``, not released for FastMCP 4.2)."""

    identifier = TASKS_EXTENSION_ID


@pytest.mark.parametrize("version", [None, "2025-11-25", "2026-07-28"])
def test_the_tasks_extension_is_neither_served_nor_advertised(version: str | None) -> None:
    """Background tasks are not served governed: nothing advertises them, and the built server
    takes no extension (test above), so no extension method bypasses governance."""
    caps = _capabilities(get_server(), version)
    assert "tasks" not in caps
    assert TASKS_EXTENSION_ID not in (caps.get("extensions") or {})
    handlers = get_server()._mcp_server._request_handlers  # type: ignore[attr-defined]
    assert not [method for method in handlers if method.startswith("tasks/")]


def test_what_registers_after_the_server_was_built_warns_that_it_is_not_served() -> None:
    local = ToolRegistry()
    local.register(ToolSpec(name="early", fn=lambda: "x", permissions=()))
    build_server(local)
    with pytest.warns(LateRegistration, match="'late'.*it is not served"):
        local.register(ToolSpec(name="late", fn=lambda: "x", permissions=()))
    with pytest.warns(LateRegistration, match="'r://late'"):
        local.resources.register(ResourceSpec(uri="r://late", fn=lambda: "x", permissions=()))
    with pytest.warns(LateRegistration, match="prompt 'late'"):
        local.prompts.register(PromptSpec(name="late", fn=lambda: "x", permissions=()))


# --- capabilities follow the registry -----------------------------------------------------------


def _capabilities(server: object, version: str | None) -> dict[str, object]:
    caps = server._mcp_server.get_capabilities(protocol_version=version)  # type: ignore[attr-defined]
    return caps.model_dump(exclude_none=True)


@pytest.mark.parametrize("version", [None, "2025-11-25", "2026-07-28"])
def test_capabilities_only_for_what_is_registered(version: str | None) -> None:
    tools_only = ToolRegistry()
    tools_only.register(ToolSpec(name="t", fn=lambda: "x", permissions=()))
    caps = _capabilities(build_server(tools_only), version)
    assert "tools" in caps and "resources" not in caps and "prompts" not in caps
    with_resource = ToolRegistry()
    with_resource.resources.register(ResourceSpec(uri="r://x", fn=lambda: "x", permissions=()))
    caps = _capabilities(build_server(with_resource), version)
    assert "resources" in caps and "prompts" not in caps
    with_prompt = ToolRegistry()
    with_prompt.prompts.register(PromptSpec(name="p", fn=lambda: "x", permissions=()))
    caps = _capabilities(build_server(with_prompt), version)
    assert "prompts" in caps and "resources" not in caps
    assert {"resources", "prompts"} <= set(_capabilities(get_server(), version))  # the suite's


async def test_a_server_without_resources_does_not_serve_their_methods() -> None:
    tools_only = ToolRegistry()
    tools_only.register(ToolSpec(name="t", fn=lambda: "x", permissions=()))
    async with Client(build_server(tools_only)) as client:
        for attempt in (client.list_resources, client.list_resource_templates, client.list_prompts):
            with pytest.raises(MCPError, match=r"[Mm]ethod not found"):
                await attempt()
