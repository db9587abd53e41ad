"""The layout ADR 0014 describes, checked on the tree and on the built wheel."""

from __future__ import annotations

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
