"""OAuth scopes → Django permissions, from the DB-backed :class:`~mcpauth.models.ScopeMapping`.

Wildcards work in both directions:

* a mapping whose scope ends in ``*`` (``mcp:tools:*``) applies to every token scope with that
  prefix (``mcp:tools:todos``);
* a token scope ending in ``*`` (``todo:*``) receives every mapping with that prefix
  (``todo:read`` and ``todo:write``).

The map is cached per process and cleared whenever a mapping changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import Permission
from django.db.models.signals import m2m_changed, post_delete, post_save

from mcpauth.caching import revocation
from mcpauth.caching.localcache import TTLCache
from mcpauth.conf import get_settings
from mcpauth.models import ScopeMapping

_ttl = lambda: get_settings().cache_ttl  # noqa: E731


class ScopeMap(dict[str, frozenset[str]]):
    """``{scope: permissions}``, plus the permissions computed from it for each scope set.

    The computed sets live and die with the map they came from, so a change is visible as soon
    as the map is reloaded: there is one cache lifetime, never two stacked.
    """

    def __init__(self, data: dict[str, frozenset[str]]) -> None:
        super().__init__(data)
        self.granted: dict[frozenset[str], frozenset[str]] = {}


_map_cache: TTLCache[ScopeMap] = TTLCache(_ttl, maxsize=1)


def perm_name(perm: Permission) -> str:
    return f"{perm.content_type.app_label}.{perm.codename}"


def _load_map() -> ScopeMap:
    result: dict[str, set[str]] = {}
    rows = ScopeMapping.permissions.through.objects.values_list(
        "scopemapping__scope",
        "permission__content_type__app_label",
        "permission__codename",
    )
    for scope, app_label, codename in rows:
        result.setdefault(scope, set()).add(f"{app_label}.{codename}")
    for scope in ScopeMapping.objects.values_list("scope", flat=True):
        result.setdefault(scope, set())
    return ScopeMap({k: frozenset(v) for k, v in result.items()})


def scope_map() -> ScopeMap:
    """``{scope: permissions}`` for every mapping (cached)."""
    return _map_cache.get_or_load("map", _load_map)


def is_matchable(scope: str) -> bool:
    """Only RFC 6749 scope characters (printable ASCII but space, ``"`` and ``\\``) match.

    A token scope holding anything else (U+00A0, U+001C ...) is one opaque string that no
    mapping matches, exactly or by wildcard.
    """
    return all("!" <= c <= "~" and c not in '"\\' for c in scope)


def _matches(token_scope: str, mapped_scope: str) -> bool:
    if token_scope == mapped_scope:
        return True
    if mapped_scope.endswith("*") and token_scope.startswith(mapped_scope[:-1]):
        return True
    # A token-side wildcard names a whole family ("todo:*"), never everything ("*", "t*").
    return (
        token_scope.endswith(":*")
        and len(token_scope) > 2
        and mapped_scope.startswith(token_scope[:-1])
    )


def _compute(mapping: ScopeMap, scopes: frozenset[str]) -> frozenset[str]:
    perms: set[str] = set()
    for token_scope in scopes:
        if not is_matchable(token_scope):
            continue
        for mapped, granted in mapping.items():
            if _matches(token_scope, mapped):
                perms |= granted
    return frozenset(perms)


#: Distinct scope sets remembered per map (a token population uses a handful).
MAX_SCOPE_SETS = 10_000


def permissions_for(scopes: frozenset[str]) -> frozenset[str]:
    """The Django permissions (``app.codename``) a set of token scopes grants."""
    if not scopes:
        return frozenset()
    mapping = scope_map()
    perms = mapping.granted.get(scopes)
    if perms is None:
        perms = _compute(mapping, scopes)
        if len(mapping.granted) >= MAX_SCOPE_SETS:
            mapping.granted.clear()
        mapping.granted[scopes] = perms
    return perms


def scopes_for(perms: Iterable[str]) -> tuple[str, ...]:
    """The least-privileged concrete scopes that together grant ``perms`` (for challenges)."""
    mapping = {s: p for s, p in scope_map().items() if not s.endswith("*")}
    chosen: list[str] = []
    covered: set[str] = set()
    for perm in sorted(set(perms)):
        if perm in covered:
            continue
        candidates = sorted((len(p), s) for s, p in mapping.items() if perm in p)
        if candidates:
            scope = candidates[0][1]
            chosen.append(scope)
            covered |= mapping[scope]
    return tuple(sorted(chosen))


def supported_scopes() -> list[str]:
    return sorted(scope_map())


def challenge_scopes() -> tuple[str, ...]:
    """Scopes for a bare 401 challenge: ``MCPAUTH_BASE_SCOPES``, else every concrete scope."""
    return get_settings().base_scopes or tuple(s for s in supported_scopes() if "*" not in s)


def resolve_permissions(names: Iterable[str]) -> list[Permission]:
    """Turn ``app_label.codename`` strings into permissions; raise ``ValueError`` if unknown."""
    perms: list[Permission] = []
    for name in names:
        app_label, _, codename = name.partition(".")
        if not app_label or not codename:
            raise ValueError(f"{name!r} is not of the form app_label.codename")
        try:
            perms.append(
                Permission.objects.select_related("content_type").get(
                    content_type__app_label=app_label, codename=codename
                )
            )
        except Permission.DoesNotExist:
            raise ValueError(f"unknown permission {name!r}") from None
    return perms


@revocation.on_change
def clear_cache(**_: Any) -> None:
    _map_cache.clear()


post_save.connect(revocation.changed, sender=ScopeMapping, dispatch_uid="mcpauth-scopes-save")
post_delete.connect(revocation.changed, sender=ScopeMapping, dispatch_uid="mcpauth-scopes-delete")
m2m_changed.connect(
    revocation.changed, sender=ScopeMapping.permissions.through, dispatch_uid="mcpauth-scopes-m2m"
)
