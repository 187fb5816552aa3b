"""The settings contract: every setting has a working default in any project, or a system check
that names it; only prefixed names are needed (the earlier unprefixed ones still work).

The whole contract, in a project made by ``django-admin startproject``, is
``tests/test_e2e_fresh_project.py``; these are its rules one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import override_settings

from mcpauth import checks as mcpauth_checks
from mcpauth.asgi import MCPApplication
from mcpauth.conf import get_settings
from mcpauth.observability import conf as observability_conf
from mcpauth.observability import logs
from mcpauth.observability.conf import get_settings as observability_settings

REFERENCE_ONLY = ("BASE_URL", "VAR_DIR", "BASE_DIR", "TESTING")


def ids(messages: list[object]) -> set[str]:
    return {m.id for m in messages}  # type: ignore[attr-defined]


def _clear() -> None:
    get_settings.cache_clear()
    observability_conf.get_settings.cache_clear()


@contextmanager
def without(*names: str) -> Iterator[None]:
    """These settings deleted (Django sends no ``setting_changed`` for a deletion, so the typed
    settings are rebuilt here, on the way in and out). Nest ``override_settings`` inside."""
    override = override_settings()
    override.enable()
    try:
        for name in names:
            if hasattr(django_settings, name):
                delattr(django_settings, name)
        _clear()
        yield
    finally:
        override.disable()
        _clear()


def test_defaults_need_nothing_the_reference_project_defines() -> None:
    names = ("MCPAUTH_BASE_URL", "MCPAUTH_DEV_KEY_PATH", "RATELIMIT_USE_CACHE", "MCPAUTH_PATH")
    with override_settings(MCPAUTH_BASE_URL="https://elsewhere.example.com"):
        with without(*REFERENCE_ONLY, *names):
            conf = get_settings()
            assert conf.base_url == "http://127.0.0.1:8000"
            assert conf.path == "/mcp" and conf.resource_url == "http://127.0.0.1:8000/mcp"
            assert conf.dev_key_path == Path("var/dev-issuer-key.pem")  # the working directory's
            assert conf.rate_limit_cache == "default"  # what django-ratelimit counts in, unset
            assert "mcpauth.E014" not in ids(mcpauth_checks.check_configuration())
        assert get_settings().base_url == "https://elsewhere.example.com"  # all restored


def test_prefixed_names_win_and_the_earlier_ones_still_work() -> None:
    with without("MCPAUTH_BASE_URL"):
        with override_settings(BASE_URL="https://old.example.com/"):
            assert get_settings().base_url == "https://old.example.com"
            with override_settings(MCPAUTH_BASE_URL="https://new.example.com"):
                assert get_settings().base_url == "https://new.example.com"

    observability = ("MCPAUTH_METRICS_TOKEN", "MCPAUTH_LOG_FORMAT", "MCPAUTH_METRICS_ALLOWED_IPS")
    old = {
        "METRICS_TOKEN": "an-old-style-token-of-some-length",
        "LOG_FORMAT": "json",
        "METRICS_ALLOWED_IPS": "10.0.0.0/8",
    }
    with without(*observability), override_settings(**old):
        conf = observability_settings()
        assert conf.metrics_token == "an-old-style-token-of-some-length"
        assert conf.log_format == "json"
        assert [str(n) for n in conf.metrics_networks] == ["10.0.0.0/8"]
        with override_settings(MCPAUTH_LOG_FORMAT="text"):
            assert observability_settings().log_format == "text"


def test_the_path_setting_moves_the_endpoint_and_its_metadata(settings) -> None:
    settings.MCPAUTH_BASE_URL = "https://shop.example.com"
    settings.MCPAUTH_PATH = "tools/mcp/"
    conf = get_settings()
    assert conf.path == "/tools/mcp"
    assert conf.resource_url == "https://shop.example.com/tools/mcp"
    assert conf.resource_metadata_url == (
        "https://shop.example.com/.well-known/oauth-protected-resource/tools/mcp"
    )
    assert conf.audiences == ("https://shop.example.com/tools/mcp",)
    app = MCPApplication()
    assert app.handles("/tools/mcp") and app.handles("/tools/mcp/") and not app.handles("/mcp")
    for bad in ("/", "/mcp?x=1", "/m c p"):
        settings.MCPAUTH_PATH = bad
        assert "mcpauth.E016" in ids(mcpauth_checks.check_configuration()), bad


def test_a_missing_rate_limit_cache_is_a_check_error_naming_what_to_add(settings) -> None:
    settings.RATELIMIT_USE_CACHE = "nowhere"
    (error,) = [m for m in mcpauth_checks.check_configuration() if m.id == "mcpauth.E014"]
    assert "'nowhere'" in error.msg and "CACHES" in error.hint
    with pytest.raises(Exception, match=r"mcpauth\.E014"):
        mcpauth_checks.assert_startup_ready()
    settings.RATELIMIT_USE_CACHE = "default"
    assert "mcpauth.E014" not in ids(mcpauth_checks.check_configuration())


def test_check_deploy_names_the_public_url(settings) -> None:
    with without("MCPAUTH_BASE_URL", "BASE_URL"):
        assert ids(mcpauth_checks.check_deploy()) == {"mcpauth.W016"}
    settings.MCPAUTH_BASE_URL = "http://mcp.example.com"
    assert ids(mcpauth_checks.check_deploy()) == {"mcpauth.W015"}
    settings.MCPAUTH_BASE_URL = "https://mcp.example.com"
    assert mcpauth_checks.check_deploy() == []


def test_metrics_directory_is_optional_and_checked_when_set(settings, tmp_path) -> None:
    from mcpauth.observability.checks import check_metrics_deploy, check_observability

    settings.MCPAUTH_METRICS_DIR = ""  # per process
    assert "mcpauth.E023" not in ids(check_observability())
    assert ids(check_metrics_deploy()) == {"mcpauth.W024"}
    settings.MCPAUTH_METRICS_DIR = str(tmp_path / "missing" / "metrics")
    assert "mcpauth.E023" in ids(check_observability())
    settings.MCPAUTH_METRICS_DIR = str(tmp_path)
    assert "mcpauth.E023" not in ids(check_observability())
    assert check_metrics_deploy() == []


def test_access_lines_get_a_handler_only_where_logging_gave_none(monkeypatch) -> None:
    root, owner = logging.getLogger(), logging.getLogger("mcpauth")
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(owner, "handlers", [])
    monkeypatch.setattr(owner, "level", logging.NOTSET)
    assert logs.ensure_handler("json") is True
    (handler,) = owner.handlers
    assert isinstance(handler.formatter, logs.JSONFormatter) and owner.level == logging.INFO
    assert logs.ensure_handler("json") is False  # once
    monkeypatch.setattr(owner, "handlers", [])
    monkeypatch.setattr(root, "handlers", [logging.NullHandler()])  # the project's LOGGING
    assert logs.ensure_handler("text") is False and owner.handlers == []
