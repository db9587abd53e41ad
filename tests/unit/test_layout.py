"""The layout ADR 0014 describes, checked on the tree and on the built wheel."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_installs_one_top_level_package(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    packages = {t for t in tops if not t.endswith(".dist-info")}
    assert packages == {"ledger"}


def test_the_wheel_carries_projections_sql_and_migrations_inside_ledger(
    wheel: zipfile.ZipFile,
) -> None:
    names = set(wheel.namelist())
    for module in (ROOT / "projections").glob("*.py"):
        assert f"ledger/projections/{module.name}" in names
    for sql in (ROOT / "projections").glob("*.sql"):
        assert f"ledger/projections/{sql.name}" in names
    for sql in (ROOT / "src" / "ledger" / "sql").glob("*.sql"):
        assert f"ledger/sql/{sql.name}" in names
    for migration in (ROOT / "migrations").glob("*.sql"):
        assert f"ledger/_migrations/{migration.name}" in names
    assert "ledger/static/admin.html" in names


def test_projections_import_as_part_of_ledger_from_the_top_level_folder() -> None:
    import ledger.projections.orders as orders

    assert Path(orders.__file__).resolve().parent == (ROOT / "projections").resolve()
    assert "projections" not in sys.modules  # no second top-level name


def test_stored_topics_still_resolve() -> None:
    # Topics in the log are permanent: they name ledger.domain, whatever the layout.
    from eventsourcing.utils import resolve_topic

    from ledger.domain.events import Delivery

    assert resolve_topic("ledger.domain:Delivery.Received") is Delivery.Received
    assert Delivery.Received.__module__ == "ledger.domain.events"


def _modules() -> list[Path]:
    """Every module of the service and of the read models (the symlink that installs
    ``projections/`` as ``ledger.projections`` is skipped: its files are listed once)."""
    link = ROOT / "src" / "ledger" / "projections"
    found = [p for p in (ROOT / "src" / "ledger").rglob("*.py") if link not in p.parents]
    return sorted([*found, *(ROOT / "projections").glob("*.py")])


def _imports_projections(tree: ast.AST) -> list[str]:
    """The imports in ``tree`` that name the concrete read models, as written."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                a.name for a in node.names if a.name.split(".")[:2] == ["ledger", "projections"]
            ]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[:2] == ["ledger", "projections"] or (
                parts == ["ledger"] and any(a.name == "projections" for a in node.names)
            ):
                found.append(f"from {node.module} import {', '.join(a.name for a in node.names)}")
        # the old top-level package name (``import projections``, ``from projections.x import``);
        # ``from ledger.cli import projections`` is the CLI's own module, not a read model
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            names = []
        found += [n for n in names if n == "projections" or n.startswith("projections.")]
    return found


def test_only_the_composition_root_imports_the_concrete_projections() -> None:
    # The core depends on ledger.readmodels.contract; app.py alone wires the read models
    # (issue 9, ADR 0014). Lazy imports inside functions count too (ast.walk).
    root = ROOT / "src" / "ledger" / "app.py"
    offenders = {
        str(path.relative_to(ROOT)): names
        for path in _modules()
        if path != root and (names := _imports_projections(ast.parse(path.read_text(), str(path))))
    }
    assert offenders == {}


def test_no_module_is_over_400_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules()}
    assert {name: n for name, n in sizes.items() if n > 400} == {}
