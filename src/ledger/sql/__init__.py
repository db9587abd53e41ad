"""Load SQL kept in ``.sql`` files: ``-- name: NAME`` starts a block, the text up to the next
marker is the statement. SQL stays SQL, with ``$n`` parameters."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_MARKER = re.compile(r"^--\s*name:\s*([a-z0-9_]+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    parts = _MARKER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


@cache
def load(path: str | Path) -> dict[str, str]:
    return parse(Path(path).read_text())


def package_sql(name: str) -> dict[str, str]:
    """The named statements in ``src/ledger/sql/<name>.sql``."""
    return load(Path(__file__).parent / f"{name}.sql")
