"""The OpenAPI document and ``/docs`` (Swagger UI) served with no internet access.

Swagger UI's assets come from the ``swagger-ui-bundle-v2`` package (a maintained bundle of
the upstream release) and are served by this service under ``/docs/assets``: the page
references nothing off-origin. Keyed routes carry ``security = BEARER`` so "Authorize" in
``/docs`` sends ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
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


def _schema(spec: dict[str, Any]) -> Schema:
    """A litestar ``Schema`` for one node of msgspec's JSON schema (the subset our request
    bodies use: types, properties, anyOf, lengths, patterns, descriptions, examples)."""
    kind = spec.get("type")
    return Schema(
        type=OpenAPIType(kind) if isinstance(kind, str) else None,
        any_of=[_schema(x) for x in spec["anyOf"]] if "anyOf" in spec else None,
        properties={k: _schema(v) for k, v in spec["properties"].items()}
        if "properties" in spec
        else None,
        required=spec.get("required"),
        additional_properties=spec.get("additionalProperties"),
        description=spec.get("description"),
        pattern=spec.get("pattern"),
        min_length=spec.get("minLength"),
        max_length=spec.get("maxLength"),
        examples=spec.get("examples"),
    )


def json_body(struct: type[msgspec.Struct]) -> type[Operation]:
    """An ``operation_class`` documenting a JSON request body that the handler decodes
    itself (so that a fault is answered with our problem naming the field)."""
    tree = msgspec.json.schema(struct)
    node = tree["$defs"][struct.__name__]
    body = RequestBody(
        content={"application/json": OpenAPIMediaType(schema=_schema(node))}, required=True
    )

    @dataclass
    class WithJsonBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = body

    return WithJsonBody


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
