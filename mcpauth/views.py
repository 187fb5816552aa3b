"""Protected-resource metadata (RFC 9728) and the development issuer's documents."""

from __future__ import annotations

from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from mcpauth.conf import get_settings
from mcpauth.identity import devissuer, scopes


def metadata() -> dict[str, object]:
    conf = get_settings()
    return {
        "resource": conf.resource_url,
        "authorization_servers": list(conf.authorization_servers),
        "scopes_supported": scopes.supported_scopes(),
        "bearer_methods_supported": ["header"],
        "resource_name": conf.resource_name,
    }


@require_GET
def protected_resource_metadata(request: HttpRequest) -> JsonResponse:
    response = JsonResponse(metadata())
    response["Access-Control-Allow-Origin"] = "*"
    response["Cache-Control"] = "public, max-age=300"
    return response


def _dev_only() -> None:
    if get_settings().preset != "dev":
        raise Http404("The development issuer is disabled.")


@require_GET
def dev_jwks(request: HttpRequest) -> JsonResponse:
    _dev_only()
    return JsonResponse(devissuer.jwks())


@require_GET
def dev_openid_configuration(request: HttpRequest) -> JsonResponse:
    _dev_only()
    conf = get_settings()
    return JsonResponse(
        {
            "issuer": conf.dev_issuer,
            "jwks_uri": f"{conf.dev_issuer}/jwks.json",
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "scopes_supported": scopes.supported_scopes(),
            "note": "Development issuer: mint tokens with `python manage.py mint_token`.",
        }
    )
