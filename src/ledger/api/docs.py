"""The OpenAPI document and ``/docs`` (Swagger UI) served with no internet access.

Swagger UI's assets come from the ``swagger-ui-bundle-v2`` package (a maintained bundle of
the upstream release) and are served by this service under ``/docs/assets``: the page
references nothing off-origin. Keyed routes carry ``security = BEARER`` so "Authorize" in
``/docs`` sends ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Schema,
    SecurityScheme,
)
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

DOCS = "/docs"
ASSETS = f"{DOCS}/assets"
SCHEME = "bearer"
BEARER: list[dict[str, list[str]]] = [{SCHEME: []}]


@dataclass
class CsvOrJsonLines(Operation):
    """The export's 200 comes as CSV or as JSON lines (``format``): both are documented."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        content = getattr(ok, "content", None)
        if content is not None:
            text = Schema(type=OpenAPIType.STRING)
            content.clear()
            content["text/csv; charset=utf-8"] = OpenAPIMediaType(schema=text)
            content["application/x-ndjson"] = OpenAPIMediaType(schema=text)


def openapi_config(version: str) -> OpenAPIConfig:
    swagger = SwaggerRenderPlugin(
        js_url=f"{ASSETS}/swagger-ui-bundle.js",
        css_url=f"{ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS}/favicon-32x32.png'>",
    )
    return OpenAPIConfig(
        title="Webhook ledger",
        version=version,
        path=DOCS,
        render_plugins=[swagger],
        description="Verified payment webhooks as an append-only event log.",
        components=Components(
            security_schemes={
                SCHEME: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="An API key (`ledger keys create`); each route names its scopes",
                )
            }
        ),
    )


def asset_router() -> Any:
    """Swagger UI's files, from the installed package."""
    return create_static_files_router(
        path=ASSETS, directories=[swagger_ui_path], include_in_schema=False, name="docs-assets"
    )
