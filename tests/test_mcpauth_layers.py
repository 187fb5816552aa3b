"""The layers go one way, and no module imports itself round a circle.

domain apps → ``mcpauth`` → ``audit``: ``audit`` imports nothing from ``mcpauth`` (its admin's
tenant and tool choices come through :mod:`audit.choices`), neither imports a domain app or the
reference project, and inside each app no import circle exists, counting every import: at module
level, deferred inside a function, and under ``TYPE_CHECKING`` alike (a circle hidden by deferred
imports is still one). The request's value types sit in a leaf, :mod:`mcpauth.values`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit import choices

ROOT = Path(__file__).resolve().parent.parent
APPS = ("mcpauth", "audit")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every module name ``module`` imports, with its line; ``from pkg import sub`` names
    ``pkg.sub`` when that is a module, as Python imports it."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            subs = [f"{origin}.{alias.name}" for alias in node.names]
            named = [s for s in subs if s in MODULES]
            yield from ((s, node.lineno) for s in named)
            if len(named) < len(subs):
                yield origin, node.lineno


def _owner(name: str) -> str | None:
    """The module of ours that importing ``name`` runs (longest known prefix), or ``None``."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name, _ in _imported(module, path):
            target = _owner(name)
            if target is not None and target != module:
                edges[module].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_deferred_and_type_checking_imports() -> None:
    edges = graph()
    # mcpauth.identity.tokens imports tenancy inside principal_for; a TYPE_CHECKING import
    # counts too
    assert "mcpauth.identity.tenancy" in edges["mcpauth.identity.tokens"]
    assert "mcpauth.values" in edges["mcpauth.runtime.context"]
    # and the cycle finder finds a circle when there is one
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles_in_mcpauth_and_audit() -> None:
    assert cycles(graph()) == []


#: mcpauth's subpackages by concern (docs/architecture.md, "Where the code is").
SUBPACKAGES = ("edge", "admission", "identity", "caching", "runtime")


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) > 2 and parts[0] == "mcpauth" and parts[1] in SUBPACKAGES:
        return parts[1]
    return None


def test_the_subpackages_depend_one_way() -> None:
    """Not only modules: the concerns themselves form no circle (identity never reaches back
    into admission, the runtime never into the edge ...)."""
    edges: dict[str, set[str]] = {name: set() for name in SUBPACKAGES}
    for module, targets in graph().items():
        source = _subpackage(module)
        for target in targets:
            owner = _subpackage(target)
            if source is not None and owner is not None and owner != source:
                edges[source].add(owner)
    assert cycles(edges) == []
    assert edges["caching"] == set()  # shared by the others, it uses none of them
    assert "identity" in edges["admission"] and "admission" not in edges["identity"]


@pytest.mark.parametrize("app", APPS)
def test_apps_import_no_domain_app_or_reference_project(app: str) -> None:
    forbidden = ("todos", "config", "tests", "bench")
    bad = [
        f"{module}:{line} imports {name}"
        for module, path in MODULES.items()
        if module.split(".")[0] == app
        for name, line in _imported(module, path)
        if name.split(".")[0] in forbidden
    ]
    assert bad == []


def test_audit_imports_nothing_from_mcpauth() -> None:
    bad = [
        f"{module}:{line} imports {name}"
        for module, path in MODULES.items()
        if module.split(".")[0] == "audit"
        for name, line in _imported(module, path)
        if name.split(".")[0] == "mcpauth"
    ]
    assert bad == []


def test_value_types_are_a_leaf() -> None:
    names = {name for name, _ in _imported("mcpauth.values", MODULES["mcpauth.values"])}
    assert {n for n in names if n.split(".")[0] in ("mcpauth", "django", "audit")} == set()
    # and the old homes still export them
    from mcpauth import values
    from mcpauth.admission import ratelimit
    from mcpauth.identity import tokens

    assert tokens.Principal is values.Principal and tokens.TenantRef is values.TenantRef
    assert tokens.VerifiedToken is values.VerifiedToken and ratelimit.Usage is values.Usage


# --- the audit admin's choices come through a hook ------------------------------------------


@pytest.mark.django_db
def test_mcpauth_fills_the_audit_choices_with_its_tenants_and_tools() -> None:
    from mcpauth.models import Tenant
    from mcpauth.runtime.registry import registry

    Tenant.objects.create(external_id="zeta", name="Zeta Ltd")
    assert ("zeta", "Zeta Ltd") in choices.tenants()
    assert choices.tools() == registry.names() and "list_todos" in choices.tools()
    assert choices.tenant_exists("zeta") and not choices.tenant_exists("nobody")


@pytest.mark.django_db
def test_without_providers_the_choices_come_from_recent_rows() -> None:
    from audit.recorder import record

    saved = (choices._providers.tenants, choices._providers.tools, choices._providers.tenant_exists)
    record(outcome="ok", status=200, request_id="r1", method="tools/call", tool="t1", tenant="x")
    record(outcome="ok", status=200, request_id="r2", method="initialize")
    try:
        choices.reset()
        assert choices.tenants() == [("x", "")]
        assert choices.tools() == ["t1"]
        assert choices.tenant_exists("anything")
        choices.register(tools=lambda: ["only"])
        assert choices.tools() == ["only"] and choices.tenants() == [("x", "")]
    finally:
        choices.register(tenants=saved[0], tools=saved[1], tenant_exists=saved[2])
