"""The embedded server's sizing (ADR 0032): a quarter of the memory for shared_buffers,
bounded, written once into ledger.conf and included once from postgresql.conf."""

from __future__ import annotations

from pathlib import Path

from ledger.embedded import CONF_NAME, INCLUDE, configure, machine_memory, memory_settings

GiB = 2**30


def test_a_quarter_of_the_memory_within_bounds() -> None:
    assert memory_settings(24 * GiB) == {
        "shared_buffers": "6144MB",
        "effective_cache_size": "18432MB",
    }
    # Never below PostgreSQL's default, never above the cap.
    assert memory_settings(256 * 2**20)["shared_buffers"] == "128MB"
    assert memory_settings(256 * GiB)["shared_buffers"] == "8192MB"
    assert memory_settings(256 * GiB)["effective_cache_size"] == "196608MB"


def test_machine_memory_is_positive() -> None:
    assert machine_memory() > 0


def test_configure_writes_the_settings_and_includes_them_once(tmp_path: Path) -> None:
    conf = tmp_path / "postgresql.conf"
    conf.write_text("shared_buffers = 128MB\n#include_if_exists = '...'\n")
    settings = {"shared_buffers": "6144MB", "effective_cache_size": "18432MB"}

    assert configure(tmp_path, settings)
    written = (tmp_path / CONF_NAME).read_text()
    assert "shared_buffers = '6144MB'\n" in written
    assert "effective_cache_size = '18432MB'\n" in written
    lines = conf.read_text().splitlines()
    # After initdb's own line, so it wins; ALTER SYSTEM's file is read after both.
    assert lines.index("shared_buffers = 128MB") < next(
        i for i, line in enumerate(lines) if line.startswith(INCLUDE)
    )

    assert not configure(tmp_path, settings)  # the same again: nothing changes
    assert conf.read_text().count(INCLUDE) == 1

    assert configure(tmp_path, {"shared_buffers": "1024MB"})  # another machine
    assert "shared_buffers = '1024MB'\n" in (tmp_path / CONF_NAME).read_text()
    assert conf.read_text().count(INCLUDE) == 1
