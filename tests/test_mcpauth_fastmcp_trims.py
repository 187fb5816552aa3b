"""The FastMCP trims (``mcpauth.runtime.fastmcp_trims``) and FastMCP's telemetry switch.

The trims use FastMCP names it does not publish, so they are pinned: the first test fails on any
other FastMCP release, and the second whenever the source of a function a trim stands in for
changes, until someone re-reads it and moves the pin (or drops the trim). The others show that
a trimmed lookup answers what FastMCP's own lookup answers, without FastMCP's task group.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterator
from typing import Any

import fastmcp
import pytest
from fastmcp import FastMCP
from fastmcp.server.providers import aggregate
from fastmcp.server.providers.aggregate import AggregateProvider
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from mcpauth.observability import tracing
from mcpauth.runtime import fastmcp_trims
from mcpauth.runtime.registry import registry
from mcpauth.runtime.server import GovernedServer, get_server

#: What each trim stands in for, and the sha256 of its source in the pinned release.
STANDS_IN_FOR: dict[str, tuple[Any, str]] = {
    "FastMCP._get_tool": (
        FastMCP._get_tool,
        "ecdb3b1bf5789069ddbf2ca6bfd0909d232ba3f6fc22a40f56e0872e28b1fe0b",
    ),
    "AggregateProvider._get_tool": (
        AggregateProvider._get_tool,
        "aba4f818c2128f6dba17495e1dc38370e9de261f050562094a6f94bac2e4d054",
    ),
    "AggregateProvider._get_highest_version_result": (
        AggregateProvider._get_highest_version_result,
        "09d26de838f8d60a7964b8374221ddba40778ae5d8255ee2734852eee9ca0d01",
    ),
}


def _digest(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def test_the_trims_are_pinned_to_the_installed_fastmcp() -> None:
    assert fastmcp.__version__ == fastmcp_trims.PINNED_FASTMCP, (
        f"FastMCP is {fastmcp.__version__}, the trims were checked against "
        f"{fastmcp_trims.PINNED_FASTMCP}: re-read what mcpauth/runtime/fastmcp_trims.py stands "
        "in for, then move PINNED_FASTMCP and the digests in this file"
    )
    assert fastmcp_trims.active()


@pytest.mark.parametrize("name", sorted(STANDS_IN_FOR))
def test_what_a_trim_stands_in_for_is_unchanged(name: str) -> None:
    function, digest = STANDS_IN_FOR[name]
    assert _digest(function) == digest, (
        f"FastMCP changed {name}: check that mcpauth/runtime/fastmcp_trims.py still computes "
        "the same answer, then record the new digest here"
    )


@pytest.fixture
def server() -> GovernedServer:
    built = get_server()
    assert isinstance(built, GovernedServer)
    assert len(built.providers) == 1  # sealed: its local provider only
    return built


@pytest.mark.django_db
async def test_the_trimmed_lookup_answers_as_fastmcps_own(server: GovernedServer) -> None:
    names = [spec.name for spec in registry]
    assert "get_todo" in names
    for name in [*names, "no_such_tool", ""]:
        trimmed = await server._get_tool(name)
        own = await FastMCP._get_tool(server, name)
        assert trimmed is own, name
        assert (trimmed is None) == (name not in names), name
    assert await server._get_tool("no_such_tool") is None


@pytest.mark.django_db
async def test_the_trimmed_lookup_starts_no_task_group(
    server: GovernedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_gather(*_: Any, **__: Any) -> Any:
        raise AssertionError("a provider fan-out ran")

    monkeypatch.setattr(aggregate, "gather", no_gather)
    tool = await server.get_tool("get_todo")
    assert tool is not None and tool.name == "get_todo"


@pytest.mark.django_db
async def test_another_fastmcp_release_runs_fastmcps_own_lookup(
    server: GovernedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fanned_out: list[bool] = []
    original = aggregate.gather

    async def counting_gather(*args: Any, **kwargs: Any) -> Any:
        fanned_out.append(True)
        return await original(*args, **kwargs)

    monkeypatch.setattr(aggregate, "gather", counting_gather)
    monkeypatch.setattr(fastmcp_trims, "PINNED_FASTMCP", "0.0.0")
    tool = await server.get_tool("get_todo")
    assert tool is not None and tool.name == "get_todo"
    assert fanned_out


@pytest.fixture
def proxy_provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SDK provider set globally (as in a process that never configured tracing)."""
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    monkeypatch.delenv(tracing.FASTMCP_MODE_VARIABLE, raising=False)
    monkeypatch.setattr(fastmcp.settings, "telemetry_mode", "native")
    yield


def test_fastmcp_spans_off_while_nothing_could_receive_them(proxy_provider: None) -> None:
    assert not tracing.enabled()
    tracing.sync_fastmcp_spans()
    assert fastmcp.settings.telemetry_mode == "off"


def test_fastmcp_spans_on_with_tracing(
    proxy_provider: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = TracerProvider()
    monkeypatch.setattr(trace, "set_tracer_provider", lambda _provider: None)
    tracing.install(provider)
    try:
        assert fastmcp.settings.telemetry_mode == "native"
    finally:
        tracing.uninstall()
    assert fastmcp.settings.telemetry_mode == "off"


def test_fastmcp_spans_on_when_another_sdk_provider_is_global(
    proxy_provider: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: TracerProvider())
    tracing.sync_fastmcp_spans()
    assert fastmcp.settings.telemetry_mode == "native"


def test_fastmcps_own_variable_wins(proxy_provider: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracing.FASTMCP_MODE_VARIABLE, "propagation_only")
    monkeypatch.setattr(fastmcp.settings, "telemetry_mode", "propagation_only")
    tracing.sync_fastmcp_spans()
    assert fastmcp.settings.telemetry_mode == "propagation_only"
