"""Realistic, correctly signed sample deliveries for ``ledger trigger`` (local testing
without a tunnel). The payload shapes follow ``shared/reference/providers.md``."""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ledger.config import Settings
from ledger.errors import LedgerError
from ledger.ingest.providers.base import hmac_sha256_hex, secret_list
from ledger.ingest.providers.midtrans import signature

MIDTRANS_STATUS_CODES = {
    "capture": "200",
    "settlement": "200",
    "authorize": "200",
    "pending": "201",
    "deny": "202",
    "cancel": "202",
    "expire": "202",
    "failure": "202",
    "refund": "200",
    "partial_refund": "200",
    "chargeback": "200",
    "partial_chargeback": "200",
}


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


class TriggerError(LedgerError, ValueError):
    pass


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _whole(amount: str | None, default: int) -> int:
    """``--amount`` as whole rupiah, parsed as a decimal (money is never a float)."""
    if not amount:
        return default
    try:
        return int(Decimal(amount))
    except (ArithmeticError, ValueError):
        raise TriggerError(f"--amount {amount!r} is not a decimal number") from None


def _first(setting: str | None) -> str | None:
    keys = secret_list(setting)
    return keys[0] if keys else None


def _dump(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def build(
    settings: Settings,
    provider: str,
    event: str,
    *,
    order_id: str | None = None,
    amount: str | None = None,
    customer: str | None = None,
    package: str | None = None,
    fraud_status: str | None = None,
    transaction_id: str | None = None,
) -> Delivery:
    """A delivery signed with the configured secrets (a missing secret is an error); a
    rotated setting (``new,old``) signs with its first, newest, secret."""
    if provider == "midtrans":
        key = _first(settings.midtrans_server_key)
        if not key:
            raise TriggerError("LEDGER_MIDTRANS_SERVER_KEY is not set")
        if event not in MIDTRANS_STATUS_CODES:
            raise TriggerError(
                f"unknown Midtrans status {event!r}: {sorted(MIDTRANS_STATUS_CODES)}"
            )
        oid = order_id or f"INV-{secrets.token_hex(4).upper()}"
        gross = amount or "299000.00"
        code = MIDTRANS_STATUS_CODES[event]
        body: dict[str, object] = {
            "transaction_time": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "transaction_status": event,
            "transaction_id": transaction_id or str(uuid.uuid4()),
            "status_message": "midtrans payment notification",
            "status_code": code,
            "signature_key": signature(oid, code, gross, key),
            "payment_type": "bank_transfer",
            "order_id": oid,
            "merchant_id": "G000000000",
            "gross_amount": gross,
            "currency": "IDR",
            "va_numbers": [{"va_number": "8578000000111", "bank": "bca"}],
        }
        if event == "settlement":
            body["settlement_time"] = body["transaction_time"]
        if event == "capture" or fraud_status:
            body["fraud_status"] = fraud_status or "accept"
        if customer:
            body["customer_email"] = customer
        return Delivery("/webhooks/midtrans", {"content-type": "application/json"}, _dump(body))
    if provider == "mayar":
        token = _first(settings.mayar_token)
        if not token:
            raise TriggerError("LEDGER_MAYAR_TOKEN is not set")
        data: dict[str, object] = {
            "id": str(uuid.uuid4()),
            "status": "SUCCESS",
            "customerName": "Budi",
            "customerEmail": customer or "budi@example.com",
            "amount": _whole(amount, 50000),
            "productName": "Token pack",
            "createdAt": _now(),
        }
        if package:
            data["package"] = package
        if event.startswith(("subscription.", "membership.")):
            data["licenseCode"] = f"LIC-{secrets.token_hex(4).upper()}"
            data["expiredAt"] = "2027-01-01T00:00:00.000Z"
        return Delivery(
            "/webhooks/mayar",
            {"content-type": "application/json", "x-callback-token": token},
            _dump({"event": event, "data": data}),
        )
    if provider == "xendit":
        token = _first(settings.xendit_token)
        if not token:
            raise TriggerError("LEDGER_XENDIT_TOKEN is not set")
        amt = _whole(amount, 32000)
        inv: dict[str, object] = {
            "id": secrets.token_hex(12),
            "external_id": order_id or str(uuid.uuid4()),
            "user_id": secrets.token_hex(12),
            "status": event,
            "merchant_name": "Toko Contoh",
            "amount": amt,
            "created": _now(),
            "updated": _now(),
            "currency": "IDR",
            "payer_email": customer or "budi@example.com",
            "description": "Booking payment",
        }
        if event in ("PAID", "SETTLED"):
            inv |= {
                "paid_amount": amt,
                "paid_at": _now(),
                "payment_method": "QR_CODE",
                "payment_channel": "QRIS",
            }
        return Delivery(
            "/webhooks/xendit",
            {"content-type": "application/json", "x-callback-token": token},
            _dump(inv),
        )
    if provider == "partner":
        secret = _first(settings.partner_secret)
        if not secret:
            raise TriggerError("LEDGER_PARTNER_SECRET is not set")
        raw = _dump(
            {
                "event": event,
                "booking_id": order_id or str(uuid.uuid4()),
                "status": "LUNAS",
                "paid_amount": _whole(amount, 32000),
                "payment_method": "QRIS",
                "payment_details": {"invoice_id": f"INV-{secrets.token_hex(3).upper()}"},
                "timestamp": _now(),
            }
        )
        return Delivery(
            "/webhooks/partner",
            {"content-type": "application/json", "x-pwa-signature": hmac_sha256_hex(secret, raw)},
            raw,
        )
    raise TriggerError(f"unknown provider {provider!r}: mayar, midtrans, xendit, partner")
