"""The served OpenAPI document is complete and true: schemathesis fuzzes every route with a
key of each scope and finds no server error and no answer that breaks the document.

Also: ``/docs`` needs no internet (its assets are served by the service), keyed routes
declare the bearer scheme, problem answers are documented as problem+json, and the CSV
export says its charset once.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from litestar.testing import AsyncTestClient

from tests.support import live_server, make_key

SCOPES = ("audit:read", "ops:admin", "tokens:write", "orders:write")
# Per key: examples per operation and a time budget (the run stops by itself well within).
MAX_EXAMPLES = int(os.environ.get("LEDGER_FUZZ_EXAMPLES", "15"))
MAX_SECONDS = int(os.environ.get("LEDGER_FUZZ_SECONDS", "35"))
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
        "ignored_auth",
    )
)


def schemathesis_command(base: str, key: str, report: Path) -> list[str]:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    return [
        st,
        "run",
        f"{base}/docs/openapi.json",
        "--url",
        base,
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(MAX_SECONDS),
        "--request-timeout",
        "10",
        "--workers",
        "2",
        "--seed",
        "8",
        "--no-color",
        # The live feed is an endless server-sent-events stream (tests/e2e/test_stream.py).
        "--exclude-path",
        "/v1/stream",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(database_url, tmp_path):
    async with live_server(database_url, LEDGER_RUN_OUTBOX="false") as http:
        base = str(http.base_url).rstrip("/")
        assert urlsplit(base).hostname == "127.0.0.1"
        failed = []
        for scope in SCOPES:
            key = await make_key(database_url, scope, name=f"fuzz-{scope}")
            proc = await asyncio.create_subprocess_exec(
                *schemathesis_command(base, key, tmp_path / f"{scope}.xml"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"},
                cwd=tmp_path,  # its cache directory stays out of the work tree
            )
            out, _ = await asyncio.wait_for(proc.communicate(), MAX_SECONDS + 240)
            text = out.decode(errors="replace")
            counts = re.findall(r"\d+ generated[^\n]*", text)
            print(f"schemathesis, {scope} key: {counts[-1] if counts else '?'}")
            if proc.returncode != 0:
                failed.append(f"schemathesis with a {scope} key:\n{text[-10000:]}")
        assert not failed, "\n\n".join(failed)


async def test_docs_need_no_internet(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    page = await client.get("/docs")
    assert page.status_code == 200, page.text
    urls = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", page.text)
    assert any(u.endswith(".js") for u in urls), urls
    assert any(u.endswith(".css") for u in urls), urls
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme, f"off-origin asset {url}"
        assert not parts.netloc, f"off-origin asset {url}"
        r = await client.get(urljoin("/docs", url))
        assert r.status_code == 200, (url, r.status_code)
        assert len(r.content) > 100


async def test_openapi_declares_bearer_auth_problems_and_bounds(client):
    doc = (await client.get("/docs/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    events = doc["paths"]["/v1/events"]["get"]
    assert events["security"] == [{"bearer": []}]
    for code in ("400", "401", "403", "503"):
        assert "application/problem+json" in events["responses"][code]["content"], code
    after = next(p for p in events["parameters"] if p["name"] == "after")
    # litestar writes the bound as a JSON number (2^63 - 1 rounds to 9.223372036854776e18)
    assert after["schema"]["maximum"] == pytest.approx(2**63 - 1)
    assert after["schema"]["minimum"] == 0
    account = doc["paths"]["/v1/accounts/{customer}"]["get"]
    customer = next(p for p in account["parameters"] if p["name"] == "customer")
    assert customer["schema"]["maxLength"] == 400
    webhook = doc["paths"]["/webhooks/{provider}"]["post"]
    assert "security" not in webhook  # providers authenticate with their own signatures
    assert {"400", "401", "413", "503"} <= set(webhook["responses"])
    spend = doc["paths"]["/v1/accounts/{customer}/spend"]["post"]
    assert "409" in spend["responses"]
    export = doc["paths"]["/v1/audit/export"]["get"]["responses"]["200"]["content"]
    assert set(export) == {"text/csv; charset=utf-8", "application/x-ndjson"}


async def test_csv_export_says_its_charset_once(client, reader):
    r = await client.get("/v1/audit/export?format=csv", headers=reader)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"


async def test_options_lists_every_method_of_a_path(client):
    r = await client.options("/webhooks/partner")
    assert r.status_code == 204
    assert set(r.headers["allow"].split(", ")) == {"GET", "OPTIONS", "POST"}
