"""Configuration from environment variables, parsed into a msgspec Struct.

Secrets live only in this Struct and in the verifiers; ``Settings.__repr__`` masks them so
an accidental ``print(settings)`` or traceback never shows a value.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from ledger.errors import LedgerError

Environment = Literal["development", "production"]

SECRET_FIELDS = (
    "mayar_token",
    "midtrans_server_key",
    "xendit_token",
    "partner_secret",
    "partner_sync_secret",
    "xendit_secret_key",
)

URL_FIELDS = (
    "database_url",
    "read_database_url",
    "migrate_database_url",
    "partner_sync_url",
    "smtp_url",
    "revalidate_url",
)

# The providers whose inbound secret must be set in production when they are enabled.
PROVIDER_SECRETS = {
    "mayar": "mayar_token",
    "midtrans": "midtrans_server_key",
    "xendit": "xendit_token",
    "partner": "partner_secret",
}


class ConfigError(LedgerError):
    """The environment does not describe a runnable service; the message names what is missing."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Everything the service reads from its environment (``LEDGER_*``)."""

    env: Environment = "development"
    home: str = ".ledger"
    database_url: str | None = None
    # The owner's login, for migrations only (ADR 0011); the service logs in with
    # database_url, which production refuses if it is a superuser or the log's owner.
    migrate_database_url: str | None = None
    # A streaming replica of database_url for read models, audit queries, exports and the
    # stream's backlog (ADR 0019); None: every query goes to the primary.
    read_database_url: str | None = None
    # Fallback expiry of cached API-key answers; a revocation reaches every process at
    # once through NOTIFY (ADR 0011), this bounds it when a notification is lost.
    key_cache_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    providers: tuple[str, ...] = ("mayar", "midtrans", "xendit", "partner")
    mayar_token: str | None = None
    midtrans_server_key: str | None = None
    xendit_token: str | None = None
    partner_secret: str | None = None
    partner_sync_url: str | None = None
    partner_sync_secret: str | None = None
    smtp_url: str | None = None
    revalidate_url: str | None = None
    token_packages: dict[str, int] = msgspec.field(
        default_factory=lambda: {"silver": 5, "gold": 100}
    )
    # Optional price per package in IDR ("silver=50000,gold=500000"): a paid amount that
    # differs is flagged for review instead of credited. None: amounts are not checked.
    package_prices: dict[str, int] | None = None
    max_body_bytes: int = 64 * 1024
    max_json_depth: int = 32
    group_commit_max: int = 512
    run_projections: bool = True
    # Outbox (ADR 0007). Comma-separated strings keep the env parsing trivial.
    smtp_from: str = "ledger@localhost"
    partner_booking_providers: str = "xendit"  # whose paid orders are partner bookings
    run_outbox: bool = True
    outbox_workers: int = 2
    outbox_batch: int = 64
    outbox_timeout: float = 10.0  # seconds per HTTP/SMTP attempt
    outbox_lease: float = 60.0  # seconds a worker owns a claimed message
    outbox_retry_schedule: str = ""  # seconds between attempts; empty: the ~1 day default
    outbox_max_age: float = 7 * 86400.0  # events older than this make no messages; 0: any
    # Slow clients (ADR 0012): seconds a client has to send a request's headers, and again
    # its whole body; then 408 or close. Shutdown: seconds in-flight requests (and open
    # streams) get after SIGTERM/SIGINT before they are cancelled.
    request_read_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    shutdown_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 8.0
    # Reconciliation (ADR 0017): the providers' status APIs. Midtrans' base defaults by
    # environment (``midtrans_api_base``); its key is the first of midtrans_server_key's.
    midtrans_api_url: str | None = None
    xendit_api_url: str = "https://api.xendit.co"
    xendit_secret_key: str | None = None  # Xendit's API secret key (not the callback token)
    reconcile_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0  # per attempt
    reconcile_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3
    # Requests per second to one provider's status API, from this process.
    reconcile_rate: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 5.0
    # The background reconciler (serve/worker): seconds between passes (0: off), and how long
    # a registered order stays pending before the status API is asked about it.
    reconcile_interval: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 300.0
    reconcile_after: Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)] = 900.0
    # Log lines: key=value for a terminal ("console") or one JSON object each ("json").
    log_format: Literal["console", "json"] = "console"

    def __repr__(self) -> str:
        shown = {
            f: ("<set>" if getattr(self, f) else None) if f in SECRET_FIELDS else getattr(self, f)
            for f in self.__struct_fields__
        }
        for url_field in URL_FIELDS:  # URLs may carry credentials (smtp://user:pw@host)
            shown[url_field] = redact_url(getattr(self, url_field))
        return f"Settings({shown})"

    __str__ = __repr__

    def secret_for(self, provider: str) -> str | None:
        value: str | None = getattr(self, PROVIDER_SECRETS[provider])
        return value

    @property
    def midtrans_api_base(self) -> str:
        """``LEDGER_MIDTRANS_API_URL``, else Midtrans' sandbox in development and its
        production API in production."""
        if self.midtrans_api_url:
            return self.midtrans_api_url
        if self.env == "production":
            return "https://api.midtrans.com"
        return "https://api.sandbox.midtrans.com"

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()


def redact_url(url: str | None) -> str | None:
    """A database URL without its password, for logs and errors."""
    if not url or "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read ``LEDGER_*`` variables; validate with msgspec; check production requirements."""
    env = dict(os.environ if environ is None else environ)
    raw: dict[str, object] = {}
    for field in Settings.__struct_fields__:
        key = f"LEDGER_{field.upper()}"
        if key in env and env[key] != "":
            raw[field] = env[key]
    if "providers" in raw:
        raw["providers"] = list(_split_list(str(raw["providers"])))
    for pairs_field in ("token_packages", "package_prices"):
        if pairs_field in raw:
            # "silver=5,gold=100"
            pairs = _split_list(str(raw[pairs_field]))
            raw[pairs_field] = {
                k.strip(): v.strip() for k, _, v in (p.partition("=") for p in pairs)
            }
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    unknown = set(settings.providers) - set(PROVIDER_SECRETS)
    if unknown:
        raise ConfigError(f"LEDGER_PROVIDERS names unknown providers: {sorted(unknown)}")
    if settings.migrate_database_url and not settings.database_url:
        raise ConfigError(
            "LEDGER_MIGRATE_DATABASE_URL (the owner, for migrations) needs LEDGER_DATABASE_URL "
            "(the service's own login role)"
        )
    if settings.env == "production":
        missing = []
        if not settings.database_url:
            missing.append("LEDGER_DATABASE_URL")
        for provider in settings.providers:
            # A secret setting is a comma-separated list ("new,old"); "," holds none.
            if not _split_list(settings.secret_for(provider) or ""):
                missing.append(f"LEDGER_{PROVIDER_SECRETS[provider].upper()}")
        if missing:
            raise ConfigError(
                "production needs these settings, which are missing: " + ", ".join(missing)
            )
    return settings


class DevSecrets(msgspec.Struct, frozen=True):
    mayar_token: str
    midtrans_server_key: str
    xendit_token: str
    partner_secret: str
    partner_sync_secret: str


def ensure_dev_secrets(settings: Settings) -> tuple[Settings, DevSecrets | None]:
    """In development, fill unset secrets from ``$LEDGER_HOME/dev-secrets.json``.

    The file is created (mode 0600) on first use with fresh random values; the new values are
    returned once so that ``serve`` can show them to the developer. Production never gets here.
    """
    if settings.env != "development":
        return settings, None
    path = settings.home_path / "dev-secrets.json"
    created: DevSecrets | None = None
    if path.exists():
        stored = msgspec.json.decode(path.read_bytes(), type=DevSecrets)
    else:
        stored = DevSecrets(
            mayar_token=secrets.token_urlsafe(24),
            midtrans_server_key="SB-Mid-server-" + secrets.token_urlsafe(18),
            xendit_token=secrets.token_urlsafe(36),
            partner_secret=secrets.token_hex(24),
            partner_sync_secret=secrets.token_hex(24),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(msgspec.json.format(msgspec.json.encode(stored)))
        created = stored
    return _fill(settings, stored), created


def _fill(settings: Settings, stored: DevSecrets) -> Settings:
    """``settings`` with each unset secret taken from ``stored`` (a set one always wins)."""
    filled = {f: getattr(settings, f) or getattr(stored, f) for f in DevSecrets.__struct_fields__}
    return msgspec.structs.replace(settings, **filled)


def secrets_in_effect(settings: Settings) -> dict[str, str | None]:
    """The secrets this configuration uses: each enabled provider's, and the partner sync
    secret when partner sync is on (``LEDGER_`` names to values; None when unset)."""
    names = [PROVIDER_SECRETS[p] for p in settings.providers]
    if settings.partner_sync_url:
        names.append("partner_sync_secret")
    return {f"LEDGER_{n.upper()}": getattr(settings, n) for n in names}


def from_dev_file(supplied: Settings, filled: Settings) -> dict[str, str]:
    """What ``ensure_dev_secrets`` filled in that the service uses: the secrets in effect that
    the environment did not supply. Never one the operator set (it may not be shown)."""
    given = secrets_in_effect(supplied)
    return {
        name: value
        for name, value in secrets_in_effect(filled).items()
        if value and not given.get(name)
    }


def read_dev_secrets(settings: Settings) -> Settings:
    """Like ``ensure_dev_secrets`` but never creates the file: a command other than ``serve``
    signs or sends with the secrets the server uses, or with none."""
    path = settings.home_path / "dev-secrets.json"
    if settings.env != "development" or not path.exists():
        return settings
    return _fill(settings, msgspec.json.decode(path.read_bytes(), type=DevSecrets))
