"""One root exception; typed errors inside, problem+json only at the edge (issue 9)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ledger.api import problems
from ledger.errors import (
    LedgerError,
    NotConfigured,
    PositionBeyondHead,
    ProjectionLagging,
    ProjectionUnavailable,
)
from ledger.projections.outbox import OutboxProjection, Targets
from ledger.readmodels import poison

SRC = Path(__file__).resolve().parents[2] / "src" / "ledger"


def _error_classes() -> list[str]:
    """Every exception class defined in src/ledger, by qualified name."""
    link = SRC / "projections"
    found: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        if link in path.parents:
            continue
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(
                (isinstance(b, ast.Name) and b.id.endswith(("Error", "Exception")))
                or (isinstance(b, ast.Name) and b.id in {"LookupError", "LedgerError"})
                for b in node.bases
            ):
                found.append(f"{module}:{node.name}")
    return found


def test_every_typed_error_derives_from_the_one_root() -> None:
    import importlib

    classes = _error_classes()
    assert len(classes) > 10  # the scan sees them
    outside = []
    for qualified in classes:
        module, name = qualified.split(":")
        cls = getattr(importlib.import_module(module), name)
        if not issubclass(cls, LedgerError):
            outside.append(qualified)
    assert outside == []


def test_the_docstring_is_the_default_message() -> None:
    class Broken(LedgerError):
        """The widget is broken.

        More detail for readers of the code."""

    assert str(Broken()) == "The widget is broken."
    assert str(Broken("a specific message")) == "a specific message"


@pytest.mark.parametrize(
    ("error", "status", "slug", "extra"),
    [
        (
            ProjectionLagging("orders", 3, 10),
            503,
            "projection-lagging",
            {"projection": "orders", "reached": 3, "wanted": 10, "lag": 7},
        ),
        (ProjectionUnavailable("orders"), 503, "projection-unavailable", {"projection": "orders"}),
        (
            PositionBeyondHead(99, 5),
            400,
            "min-position-beyond-head",
            {"parameter": "min_position", "head": 5},
        ),
    ],
)
def test_read_model_errors_are_mapped_once_in_api_problems(
    error: LedgerError, status: int, slug: str, extra: dict[str, object]
) -> None:
    # litestar picks the handler by the exception's MRO; the map holds the class itself.
    handler = problems.CONFIG.exception_to_problem_detail_map[type(error)]
    answer = handler(error)
    assert (answer.status_code, answer.type_, answer.extra) == (status, f"/problems/{slug}", extra)


def test_readmodels_never_import_http() -> None:
    for path in (SRC / "readmodels").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        ]
        assert [n for n in names if n.startswith(("ledger.api", "litestar"))] == [], path.name


def test_the_outbox_projection_never_reads_the_environment_for_its_targets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It used to fall back to load_settings(); now only the composition root configures it.
    monkeypatch.setenv("LEDGER_PARTNER_SYNC_URL", "http://127.0.0.1:9/sync")
    monkeypatch.setenv("LEDGER_PARTNER_SYNC_SECRET", "s" * 32)
    with pytest.raises(NotConfigured):
        _ = OutboxProjection().targets
    # A deployment fault, never the event's: the runner retries, nothing is set aside.
    assert not poison.may_poison(NotConfigured())
    targets = Targets(partner_url="http://127.0.0.1:9/sync")
    assert OutboxProjection(targets).targets is targets


def test_readers_get_a_projections_named_queries_through_the_contract() -> None:
    # The core reads a read model by name (ReadModels.query), never by importing it.
    from ledger.errors import UnknownProjection
    from ledger.projections.token_balances import PROJECTION
    from ledger.readmodels.access import ReadModels

    rm = ReadModels(None, projections={PROJECTION.name: PROJECTION})  # type: ignore[arg-type]
    assert rm.query("token_balances", "account") == PROJECTION.queries["account"]
    with pytest.raises(UnknownProjection):
        rm.query("token_balances", "no_such_query")
    with pytest.raises(UnknownProjection):
        rm.query("no_such_projection", "account")
