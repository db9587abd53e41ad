"""Configuration: production refuses to start incomplete, secrets never shown, dev secrets kept
private and reused."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.config import ConfigError, Settings, ensure_dev_secrets, load_settings

# The installed console script, next to this interpreter (as a user would run it).
LEDGER = str(Path(sys.executable).with_name("ledger"))
PROVIDER_VARS = {
    "mayar": "LEDGER_MAYAR_TOKEN",
    "midtrans": "LEDGER_MIDTRANS_SERVER_KEY",
    "xendit": "LEDGER_XENDIT_TOKEN",
    "partner": "LEDGER_PARTNER_SECRET",
}
COMPLETE_PRODUCTION = {
    "LEDGER_ENV": "production",
    "LEDGER_DATABASE_URL": "postgresql://ledger:pw-db-1234@db.example:5432/ledger",
    "LEDGER_MAYAR_TOKEN": "mayar-token-0001",
    "LEDGER_MIDTRANS_SERVER_KEY": "Mid-server-0002",
    "LEDGER_XENDIT_TOKEN": "xendit-token-0003",
    "LEDGER_PARTNER_SECRET": "partner-secret-0004",
}


def test_complete_production_environment_loads() -> None:
    s = load_settings(COMPLETE_PRODUCTION)
    assert s.env == "production"
    assert s.midtrans_server_key == "Mid-server-0002"


def test_production_with_nothing_names_every_missing_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"LEDGER_ENV": "production"})
    message = str(info.value)
    for var in ["LEDGER_DATABASE_URL", *PROVIDER_VARS.values()]:
        assert var in message


@pytest.mark.parametrize("missing", ["LEDGER_DATABASE_URL", *PROVIDER_VARS.values()])
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_production_names_exactly_the_missing_variable(missing: str, how: str) -> None:
    env = dict(COMPLETE_PRODUCTION)
    if how == "absent":
        del env[missing]
    else:
        env[missing] = ""
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert missing in message
    for other in ["LEDGER_DATABASE_URL", *PROVIDER_VARS.values()]:
        if other != missing:
            assert other not in message
    for value in COMPLETE_PRODUCTION.values():
        if value != "production":
            assert value not in message


def test_production_needs_only_the_enabled_providers_secrets() -> None:
    env = {
        "LEDGER_ENV": "production",
        "LEDGER_DATABASE_URL": "postgresql://db.example/ledger",
        "LEDGER_PROVIDERS": "midtrans,xendit",
        "LEDGER_MIDTRANS_SERVER_KEY": "k",
    }
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert "LEDGER_XENDIT_TOKEN" in message
    assert "LEDGER_MAYAR_TOKEN" not in message
    assert "LEDGER_PARTNER_SECRET" not in message
    s = load_settings({**env, "LEDGER_XENDIT_TOKEN": "t"})
    assert s.providers == ("midtrans", "xendit")


def test_unknown_provider_is_named() -> None:
    with pytest.raises(ConfigError, match="paypal"):
        load_settings({"LEDGER_PROVIDERS": "midtrans,paypal"})


def test_production_serve_exits_nonzero_naming_what_is_missing(tmp_path: Path) -> None:
    """Through the real command: it must refuse before opening a port or a database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_") and k != "PYTHONPATH"}
    env |= {"LEDGER_ENV": "production", "LEDGER_HOME": str(tmp_path), "LEDGER_XENDIT_TOKEN": "x"}
    proc = subprocess.run(
        [LEDGER, "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    for var in ("LEDGER_DATABASE_URL", "LEDGER_MAYAR_TOKEN", "LEDGER_MIDTRANS_SERVER_KEY"):
        assert var in proc.stderr
    assert "LEDGER_XENDIT_TOKEN" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "pgdata").exists()
    assert not (tmp_path / "dev-secrets.json").exists()


# -- secrets never shown -------------------------------------------------------------------

secret_values = st.text(
    st.characters(codec="ascii", categories=["Lu", "Ll", "Nd"]), min_size=12, max_size=40
)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(secret_values, min_size=7, max_size=7, unique=True))
def test_repr_never_contains_a_secret(values: list[str]) -> None:
    mayar, midtrans, xendit, partner, sync, db_pw, smtp_pw = values
    s = load_settings(
        {
            "LEDGER_ENV": "production",
            "LEDGER_DATABASE_URL": f"postgresql://ledger:{db_pw}@db.example:5432/ledger",
            "LEDGER_MAYAR_TOKEN": mayar,
            "LEDGER_MIDTRANS_SERVER_KEY": midtrans,
            "LEDGER_XENDIT_TOKEN": xendit,
            "LEDGER_PARTNER_SECRET": partner,
            "LEDGER_PARTNER_SYNC_SECRET": sync,
            "LEDGER_SMTP_URL": f"smtp://mailer:{smtp_pw}@mail.example:587",
        }
    )
    for shown in (repr(s), str(s), f"{s}", f"{s!r}", repr([s]), repr({"settings": s})):
        for value in values:
            assert value not in shown
    # ...while still saying what is configured.
    assert "<set>" in repr(s)
    assert "db.example" in repr(s)


def test_invalid_configuration_error_does_not_echo_secrets() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"LEDGER_MAYAR_TOKEN": "tok-secret-999", "LEDGER_MAX_JSON_DEPTH": "deep"})
    assert "max_json_depth" in str(info.value)
    assert "tok-secret-999" not in str(info.value)


# -- development secrets file ------------------------------------------------------------------


def dev_settings(home: Path, **env: str) -> Settings:
    return load_settings({"LEDGER_HOME": str(home), **env})


def test_dev_secrets_are_created_private_and_reused(tmp_path: Path) -> None:
    home = tmp_path / "nested" / "home"
    filled, created = ensure_dev_secrets(dev_settings(home))
    assert created is not None
    path = home / "dev-secrets.json"
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600, oct(mode)
    for field in ("mayar_token", "midtrans_server_key", "xendit_token", "partner_secret"):
        value = getattr(filled, field)
        assert value
        assert value == getattr(created, field)
        assert len(value) >= 16
    stored = msgspec.json.decode(path.read_bytes())
    assert stored["midtrans_server_key"] == filled.midtrans_server_key

    before = path.read_bytes()
    again, created_again = ensure_dev_secrets(dev_settings(home))
    assert created_again is None  # shown once only
    assert path.read_bytes() == before
    for field in ("mayar_token", "midtrans_server_key", "xendit_token", "partner_secret"):
        assert getattr(again, field) == getattr(filled, field)


def test_dev_secrets_differ_between_homes(tmp_path: Path) -> None:
    a, _ = ensure_dev_secrets(dev_settings(tmp_path / "a"))
    b, _ = ensure_dev_secrets(dev_settings(tmp_path / "b"))
    assert a.midtrans_server_key != b.midtrans_server_key
    assert a.partner_secret != b.partner_secret


def test_configured_secret_wins_over_the_dev_file(tmp_path: Path) -> None:
    ensure_dev_secrets(dev_settings(tmp_path))
    s, created = ensure_dev_secrets(dev_settings(tmp_path, LEDGER_XENDIT_TOKEN="from-env-1"))
    assert created is None
    assert s.xendit_token == "from-env-1"
    assert s.mayar_token  # the others still come from the file


def test_production_never_creates_a_dev_secrets_file(tmp_path: Path) -> None:
    s = load_settings({**COMPLETE_PRODUCTION, "LEDGER_HOME": str(tmp_path)})
    same, created = ensure_dev_secrets(s)
    assert created is None
    assert same == s
    assert not (tmp_path / "dev-secrets.json").exists()
