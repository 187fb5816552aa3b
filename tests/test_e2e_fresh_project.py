"""The wheel, added to a Django project that has never seen it, the way the docs say.

The wheel is built from the repository (``uv build``) and must hold the two apps only, with
their templates, static files, migrations and ``py.typed``. Then ``django-admin startproject
shop`` in a temporary directory, in a fresh virtualenv (``python -m venv``, no system site
packages) holding the wheel, its locked dependencies and the ``server`` extra (uvicorn), all
from uv's cache (``--offline``: ``make install`` filled it). The project gets exactly the
documented contract (the README and docs/configuration.md): ``INSTALLED_APPS += ["mcpauth",
"audit"]``, ``include("mcpauth.urls")``, ``mcpauth.asgi.get_asgi_application``, plus the
public URL it is served at, and an app ``catalog`` with one ``TenantOwned`` model and one tool
in its ``mcp.py``. It migrates, mints a development token, and serves under uvicorn:
``fastmcp.Client`` (2026-07-28) and the ``mcp`` SDK (handshake) call the tool, each call leaves
one audit row, the 401's metadata URL resolves, and a superuser sees the audit overview and
changelist.

The fresh project uses SQLite whatever the suite runs on, so this runs in CI's SQLite pass
only (about 30 seconds).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import httpx2
import pytest
from fastmcp import Client
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.conftest import free_port
from tests.servers import ROOT, serving

pytestmark = pytest.mark.skipif(
    os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="the fresh project runs on SQLite: CI runs this in its SQLite pass",
)

TIMEOUT = 180
PASSWORD = "fresh-project-admin-pw-1"

CATALOG_MODELS = """\
from django.db import models

from mcpauth.models import TenantOwned


class Product(TenantOwned):
    name = models.CharField(max_length=100)
"""

CATALOG_MCP = '''\
from mcpauth import tool

from .models import Product


@tool(permissions=["catalog.add_product"])
def add_product(name: str) -> dict:
    """Add a product to your organisation's catalog."""
    product = Product.objects.current().create(name=name)
    return {"id": product.pk, "name": product.name}
'''


def uv() -> Path:
    found = Path(sys.executable).parent / "uv"
    if not found.exists():
        found = Path(shutil.which("uv") or "")
    if not found.is_file():
        pytest.skip("uv is not installed in this environment (make install puts it there)")
    return found


def run(cmd: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """Nothing of this suite's environment (DJANGO_SETTINGS_MODULE, PROMETHEUS_MULTIPROC_DIR,
    DATABASE_URL ...): only what a shell needs."""
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    return {**keep, "PYTHONUNBUFFERED": "1", "UV_PYTHON_DOWNLOADS": "never", **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (a build leaves ``build/`` behind)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("mcpauth", "audit", "config", "todos", "tests", "bench"):
        if name in ("mcpauth", "audit"):
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:  # present in the repository, so the build's package selection is what is tested
            (src / name).mkdir()
            (src / name / "__init__.py").write_text("")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    run([uv(), "build", "--wheel", "--offline", "--out-dir", out, src], cwd=src)
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_is_the_two_apps_with_templates_static_files_and_migrations(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert {n.split("/")[0] for n in names} == {"mcpauth", "audit", dist_info}
    for expected in (
        "audit/templates/admin/audit/overview.html",
        "audit/templates/admin/audit/auditevent/change_list.html",
        "audit/static/audit/admin.css",
        "audit/migrations/0001_initial.py",
        "mcpauth/migrations/0001_initial.py",
        "audit/management/commands/audit_seal.py",
        "mcpauth/management/commands/mint_token.py",
        "mcpauth/urls.py",
        "mcpauth/asgi.py",
        "mcpauth/py.typed",
        "audit/py.typed",
    ):
        assert expected in names, expected
    # and every module of the source tree, subpackages included (edge/, identity/, admission/ ...)
    for app in ("mcpauth", "audit"):
        for module in (ROOT / app).rglob("*.py"):
            assert module.relative_to(ROOT).as_posix() in names, module
    templates = [n for n in names if "/templates/" in n]
    assert len(templates) == len(list((ROOT / "audit" / "templates").rglob("*.html")))

    metadata = Parser().parsestr(zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode())
    requires = metadata.get_all("Requires-Dist") or []
    plain = {re.split(r"[\[<>=; ]", r, maxsplit=1)[0].lower() for r in requires if ";" not in r}
    # what the apps need, and no more: the reference project's own packages are not in it
    assert plain == {
        "django",
        "fastmcp",
        "pyjwt",
        "django-ratelimit",
        "redis",
        "prometheus-client",
        "opentelemetry-sdk",
        "httpx2",  # mcpauth.downstream's clients
    }
    extras = {r.split(";")[1].strip() for r in requires if ";" in r}
    assert {'extra == "server"', 'extra == "postgres"', 'extra == "otlp"'} <= extras
    assert not any("ninja" in r or "dj-database-url" in r for r in requires)
    assert all("extra ==" in r for r in requires if r.startswith(("gunicorn", "uvicorn")))


@dataclass
class Fresh:
    project: Path
    python: Path
    base: str
    token: str
    log: Path

    def manage(self, *args: str) -> str:
        return run([self.python, "manage.py", *args], cwd=self.project)


def _apply_the_contract(project: Path, base: str) -> None:
    """Exactly what the README's "Add it to an existing Django project" says, into startproject's
    own files."""
    settings = project / "shop" / "settings.py"
    settings.write_text(
        settings.read_text()
        + '\nINSTALLED_APPS += ["mcpauth", "audit", "catalog"]\n'
        + f'MCPAUTH_BASE_URL = "{base}"  # where this server is reached\n'
    )
    urls = project / "shop" / "urls.py"
    text = urls.read_text()
    text = text.replace("from django.urls import path", "from django.urls import include, path")
    text = re.sub(
        r"""(path\(["']admin/["'], admin\.site\.urls\),)""",
        r"""\1\n    path("", include("mcpauth.urls")),""",
        text,
    )
    assert 'include("mcpauth.urls")' in text, text
    urls.write_text(text)
    asgi = project / "shop" / "asgi.py"
    text = asgi.read_text().replace(
        "from django.core.asgi import get_asgi_application",
        "from mcpauth.asgi import get_asgi_application",
    )
    assert "from mcpauth.asgi import get_asgi_application" in text
    asgi.write_text(text)
    app = project / "catalog"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text(CATALOG_MODELS)
    (app / "mcp.py").write_text(CATALOG_MCP)


@pytest.fixture(scope="module")
def fresh(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fresh]:
    home = tmp_path_factory.mktemp("fresh")
    venv = home / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=home)
    python = venv / "bin" / "python"
    # the wheel's dependencies as the lock pins them, from uv's cache (no index, no network)
    run(
        [
            uv(),
            "sync",
            "--project",
            ROOT,
            "--frozen",
            "--offline",
            "--no-install-project",
            "--no-dev",
            "--extra",
            "server",
        ],
        cwd=home,
        env=clean_env(UV_PROJECT_ENVIRONMENT=str(venv)),
    )
    # the wheel itself, whose requirements must then all be met without fetching anything
    out = run(
        [uv(), "pip", "install", "--offline", "--python", python, f"{wheel}[server]"], cwd=home
    )
    run([uv(), "pip", "check", "--python", python], cwd=home)
    assert not list(venv.glob("lib/*/site-packages/config")), out

    run([venv / "bin" / "django-admin", "startproject", "shop"], cwd=home)
    project = home / "shop"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    _apply_the_contract(project, base)
    env = clean_env()
    fresh = Fresh(project, python, base, "", home / "server.log")
    fresh.manage("makemigrations", "catalog")
    fresh.manage("migrate", "--noinput")
    fresh.manage("scopes", "grant", "catalog:write", "catalog.add_product")
    run(
        [
            python,
            "manage.py",
            "createsuperuser",
            "--noinput",
            "--username",
            "admin",
            "--email",
            "admin@example.com",
        ],
        cwd=project,
        env={**env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
    )
    fresh.token = fresh.manage(
        "mint_token", "--client-id", "shop-agent", "--tenant", "acme", "--scopes", "catalog:write"
    ).strip()
    log = fresh.log.open("w+b")
    proc = subprocess.Popen(
        [
            venv / "bin" / "uvicorn",
            "shop.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
        ],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with serving(proc, base, log, what="the fresh project", seconds=60):
            yield fresh
    finally:
        log.close()


def audit_rows(fresh: Fresh) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(fresh.project / "db.sqlite3") as db:
        return db.execute(
            "SELECT method, tool, outcome, tenant FROM audit_auditevent "
            "WHERE method = 'tools/call' ORDER BY id"
        ).fetchall()


async def test_the_tool_is_served_governed_and_audited(fresh: Fresh) -> None:
    url = f"{fresh.base}/mcp"
    async with Client(url, auth=fresh.token) as client:  # negotiates 2026-07-28
        assert [t.name for t in await client.list_tools()] == ["add_product"]
        added = (await client.call_tool("add_product", {"name": "teapot"})).data
    assert added["name"] == "teapot"

    headers = {"Authorization": f"Bearer {fresh.token}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        init = await session.initialize()  # the handshake era
        result = await session.call_tool("add_product", {"name": "kettle"})
    assert init.protocol_version.startswith("20")
    assert not result.is_error and result.structured_content["name"] == "kettle"

    assert audit_rows(fresh) == [
        ("tools/call", "add_product", "ok", "acme"),
        ("tools/call", "add_product", "ok", "acme"),
    ]
    # /mcp/ is the same endpoint (no redirect)
    listed = httpx2.post(
        f"{fresh.base}/mcp/",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={**headers, "Accept": "application/json, text/event-stream"},
    )
    assert listed.status_code == 200, listed.text
    assert [t["name"] for t in listed.json()["result"]["tools"]] == ["add_product"]
    # one access line per request, though the project configured no logging
    lines = [line for line in fresh.log.read_text().splitlines() if "mcpauth.access" in line]
    calls = [line for line in lines if "tools/call 200" in line and "tool=add_product" in line]
    assert len(calls) == 2
    # fastmcp.Client spoke 2026-07-28, the mcp SDK the handshake era
    assert "protocol_version=2026-07-28" in calls[0], calls[0]
    assert "protocol_version=2026-07-28" not in calls[1], calls[1]


def test_the_401_points_to_metadata_that_resolves(fresh: Fresh) -> None:
    refused = httpx2.post(
        f"{fresh.base}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert refused.status_code == 401
    match = re.search(r'resource_metadata="([^"]+)"', refused.headers["www-authenticate"])
    assert match and match.group(1).startswith(fresh.base)
    metadata = httpx2.get(match.group(1))
    assert metadata.status_code == 200
    assert metadata.json()["resource"] == f"{fresh.base}/mcp"
    assert metadata.json()["scopes_supported"] == ["catalog:write"]
    for path in ("/.well-known/oauth-protected-resource", "/health", "/health/ready", "/metrics"):
        assert httpx2.get(f"{fresh.base}{path}").status_code == 200, path


def test_a_superuser_sees_the_audit_overview_and_changelist(fresh: Fresh) -> None:
    with httpx2.Client(base_url=fresh.base, follow_redirects=True) as browser:
        login = browser.get("/admin/login/?next=/admin/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
        assert token, login.text[:500]
        page = browser.post(
            "/admin/login/?next=/admin/",
            data={
                "csrfmiddlewaretoken": token.group(1),
                "username": "admin",
                "password": PASSWORD,
                "next": "/admin/",
            },
            headers={"Referer": f"{fresh.base}/admin/login/"},
        )
        assert page.status_code == 200 and "Log out" in page.text, page.text[:500]
        overview = browser.get("/admin/audit/overview/")
        changelist = browser.get("/admin/audit/auditevent/")
        css = browser.get("/static/audit/admin.css")  # DEBUG: served like runserver does
    assert overview.status_code == 200 and "Audit overview" in overview.text
    assert changelist.status_code == 200 and "add_product" in changelist.text
    assert css.status_code == 200


def check(fresh: Fresh, *args: str) -> tuple[int, set[str]]:
    proc = subprocess.run(
        [str(fresh.python), "manage.py", "check", *args],
        cwd=fresh.project,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return proc.returncode, set(re.findall(r"\b((?:mcpauth|audit)\.[EW]\d+)\b", proc.stderr))


def test_check_passes_and_check_deploy_lists_what_production_needs(fresh: Fresh) -> None:
    # development: everything works; the one warning is that development tokens are accepted
    assert check(fresh) == (0, {"mcpauth.W012"})
    # the same project with DEBUG off, as production runs it, under --deploy
    (fresh.project / "shop" / "settings_production.py").write_text(
        "from .settings import *  # noqa\n\nDEBUG = False\nALLOWED_HOSTS = ['shop.example.com']\n"
    )
    status, found = check(fresh, "--deploy", "--settings", "shop.settings_production")
    assert status != 0
    assert found == {
        "mcpauth.E001",  # no identity provider
        "mcpauth.W010",  # the rate-limit cache is not shared between workers
        "mcpauth.W015",  # MCPAUTH_BASE_URL is not https
        "mcpauth.W024",  # metrics per process
        "mcpauth.W060",  # the requestState keys are derived from SECRET_KEY
        "audit.E002",  # no seal key
    }
