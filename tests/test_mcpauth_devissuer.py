"""The development issuer: DEBUG-only, a local key under var/, mint_token, served JWKS."""

from __future__ import annotations

import io
import subprocess
import sys

import httpx2
import pytest
from django.core.management import CommandError, call_command
from fastmcp import Client

from mcpauth.conf import get_settings
from tests.conftest import free_port
from tests.servers import ROOT, uvicorn_process


@pytest.fixture
def dev_mode(settings, tmp_path):
    settings.DEBUG = True
    settings.MCPAUTH_ISSUER = ""
    settings.MCPAUTH_DEV_KEY_PATH = tmp_path / "dev-key.pem"
    return settings


def test_dev_preset_only_with_debug_and_no_issuer(settings):
    settings.MCPAUTH_ISSUER = ""
    settings.DEBUG = False
    assert get_settings().preset == "none"
    settings.DEBUG = True
    assert get_settings().preset == "dev"
    settings.MCPAUTH_ISSUER = "https://idp.example.com"
    assert get_settings().preset == "oidc"


def test_mint_token_refused_outside_dev_mode():
    with pytest.raises(CommandError, match="development issuer is disabled"):
        call_command("mint_token", "--client-id", "x", stdout=io.StringIO())


@pytest.mark.parametrize("args", [["--client-id", " "], ["--client-id", "x", "--ttl", "0"]])
def test_mint_token_bad_input(dev_mode, args):
    with pytest.raises(CommandError):
        call_command("mint_token", *args, stdout=io.StringIO())


async def test_minted_token_works_against_mcp(dev_mode, live):
    out = io.StringIO()
    call_command(
        "mint_token",
        "--client-id",
        "quickstart",
        "--tenant",
        "demo",
        "--scopes",
        "todo:read todo:write",
        stdout=out,
    )
    token = out.getvalue().strip()
    assert (dev_mode.MCPAUTH_DEV_KEY_PATH.stat().st_mode & 0o777) == 0o600
    async with Client(live.url, auth=token) as client:
        created = (await client.call_tool("create_todo", {"title": "dev"})).data
        assert created["todo"]["created_by"] == "quickstart"
    jwks = httpx2.get(f"{live.base}/dev-issuer/jwks.json").json()
    assert jwks["keys"][0]["kty"] == "RSA" and "d" not in jwks["keys"][0]
    meta = httpx2.get(f"{live.base}/.well-known/oauth-protected-resource/mcp").json()
    assert meta["authorization_servers"] == ["http://127.0.0.1:8000/dev-issuer"]


def test_dev_endpoints_404_when_not_in_dev_mode(live):
    assert httpx2.get(f"{live.base}/dev-issuer/jwks.json").status_code == 404


def test_startup_fails_clearly_without_issuer_when_debug_off(tmp_path):
    env = {
        "DEBUG": "0",
        "SECRET_KEY": "x",
        "VAR_DIR": str(tmp_path),
        "MCPAUTH_ISSUER": "",
        "SCALEKIT_ENVIRONMENT_URL": "",
        "SCALEKIT_RESOURCE_ID": "",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-c", "import config.asgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "mcpauth.E001" in proc.stderr and "No identity provider" in proc.stderr


def test_missing_secret_key_is_a_clear_error(tmp_path):
    env = {"DEBUG": "0", "VAR_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0 and "SECRET_KEY is not set" in proc.stderr


def test_uvicorn_quickstart_process_serves_dev_tokens(tmp_path):
    """What `make run` starts: DEBUG on, SQLite in var/, the dev issuer."""
    env = {"DEBUG": "1", "VAR_DIR": str(tmp_path), "DATABASE_URL": "", "REDIS_URL": ""}
    port = free_port()
    base_env = {**env, "BASE_URL": f"http://127.0.0.1:{port}"}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env={**_os_env(), **base_env},
        check=True,
        capture_output=True,
        timeout=120,
    )
    token = subprocess.run(
        [sys.executable, "manage.py", "mint_token", "--client-id", "qs", "--tenant", "demo"],
        cwd=ROOT,
        env={**_os_env(), **base_env},
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    with uvicorn_process(port, base_env) as base:
        resp = httpx2.post(
            f"{base}/mcp",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "create_todo", "arguments": {"title": "quick"}},
            },
            headers={
                "accept": "application/json, text/event-stream",
                "authorization": f"Bearer {token}",
            },
        )
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"]["structuredContent"]["todo"]["title"] == "quick"


def _os_env() -> dict[str, str]:
    import os

    return dict(os.environ)
