"""The events ``bench/projections.py`` rebuilds from: deterministic in their index.

Deliveries of the four providers shaped like ``ledger.ingest.samples.build`` makes them
(dedup keys and kinds by the providers' rules, checked on a sample with the real
verifiers), plus what else the outbox and orders projections read: one order registration
per 50 deliveries (alternately a Midtrans order, often registered after its notifications
began, so owed e-mails are settled, and a Xendit booking with its ``booking_id``) and one
verified status-API answer reading ``paid`` per 1,000 (a missed Midtrans settlement
recovered by ``ledger reconcile``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from ledger.domain.events import (
    CHECKED_TOPIC,
    DELIVERY_TOPIC,
    RECEIVED_TOPIC,
    RECONCILIATION_TOPIC,
    CheckedState,
    DeliveryState,
    check_event_id,
    delivery_id,
    encode_checked,
    encode_state,
)
from ledger.domain.orders import (
    REGISTERED_TOPIC,
    REGISTRATION_TOPIC,
    RegisteredState,
    encode_registered,
    registration_id,
)
from ledger.ingest.providers import build_providers
from ledger.ingest.providers.base import kept_headers
from tests.support import test_settings

SETTINGS = test_settings()
PROVIDERS = build_providers(SETTINGS)
JSON = msgspec.json.Encoder()
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
MIX = ("mayar",) * 7 + ("midtrans",) * 6 + ("xendit",) * 4 + ("partner",) * 3
MAYAR_EVENTS = (
    ("payment.success",) * 14
    + ("payment.received",) * 2
    + ("subscription.activated", "subscription.renewed", "subscription.cancelled")
    + ("payment.pending",)
)
MIDTRANS_CODES = {"pending": "201", "settlement": "200", "capture": "200", "expire": "202"}
REGISTER_EVERY = 50
ANSWER_EVERY = 1000

Row = tuple[uuid.UUID, int, str, bytes]


def _ts(i: int) -> tuple[datetime, str]:
    t = BASE_TIME + timedelta(milliseconds=37 * i)
    return t, t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def delivery(i: int) -> tuple[str, dict[str, str], bytes, str, str]:
    """Event ``i``: (provider, headers, body, dedup key, kind), deterministic in ``i``."""
    provider = MIX[i % len(MIX)]
    _, iso = _ts(i)
    uid = uuid.UUID(bytes=hashlib.blake2b(i.to_bytes(8, "big"), digest_size=16).digest())
    customer = f"customer{(i * 7919) % 20000}@example.id"
    if provider == "mayar":
        event = MAYAR_EVENTS[(i // len(MIX)) % len(MAYAR_EVENTS)]
        data: dict[str, Any] = {
            "id": str(uid),
            "status": "SUCCESS",
            "customerName": "Budi",
            "customerEmail": customer,
            "amount": 50000 if i % 3 else 250000,
            "productName": "Token pack",
            "createdAt": iso,
        }
        if event.startswith("payment."):
            data["package"] = "silver" if i % 3 else "gold"
        else:
            data["licenseCode"] = f"LIC-{i % 5000:05d}"
            data["expiredAt"] = "2027-01-01T00:00:00.000Z"
        body = JSON.encode({"event": event, "data": data})
        headers = {"content-type": "application/json", "x-callback-token": "<token>"}
        return provider, headers, body, f"mayar:{uid}:{event}", event
    if provider == "midtrans":
        order = f"INV-{i // 40:08d}"  # consecutive notifications of one order
        status = ("pending", "settlement", "capture", "expire")[(i // len(MIX)) % 4]
        code = MIDTRANS_CODES[status]
        gross = "299000.00"
        key = SETTINGS.midtrans_server_key or ""
        midtrans_body: dict[str, Any] = {
            "transaction_time": iso.replace("T", " ")[:19],
            "transaction_status": status,
            "transaction_id": str(uid),
            "status_message": "midtrans payment notification",
            "status_code": code,
            "signature_key": hashlib.sha512(f"{order}{code}{gross}{key}".encode()).hexdigest(),
            "payment_type": "bank_transfer",
            "order_id": order,
            "merchant_id": "G000000000",
            "gross_amount": gross,
            "currency": "IDR",
            "va_numbers": [{"va_number": "8578000000111", "bank": "bca"}],
        }
        if status == "capture":
            midtrans_body["fraud_status"] = "accept"
        body = JSON.encode(midtrans_body)
        dedup = f"midtrans:{order}:{uid}:{status}:{code}"
        if status == "capture":
            dedup += ":accept"
        return provider, {"content-type": "application/json"}, body, dedup, status
    if provider == "xendit":
        status = ("PENDING", "PAID", "SETTLED", "EXPIRED")[(i // len(MIX)) % 4]
        inv: dict[str, Any] = {
            "id": uid.hex[:24],
            "external_id": f"booking-{i // 30:08d}",
            "user_id": "5f0c0e0a1b2c3d4e5f607182",
            "status": status,
            "merchant_name": "Toko Contoh",
            "amount": 32000,
            "created": iso,
            "updated": iso,
            "currency": "IDR",
            "payer_email": customer,
            "description": "Booking payment",
        }
        if status in ("PAID", "SETTLED"):
            inv |= {
                "paid_amount": 32000,
                "paid_at": iso,
                "payment_method": "QR_CODE",
                "payment_channel": "QRIS",
            }
        body = JSON.encode(inv)
        headers = {"content-type": "application/json", "x-callback-token": "<token>"}
        return provider, headers, body, f"xendit:{inv['id']}:{status}", status
    booking = f"BK-{i // len(MIX):08d}"
    event = ("booking.paid", "booking.updated")[i % 2]
    body = JSON.encode(
        {
            "event": event,
            "booking_id": booking,
            "status": "LUNAS",
            "paid_amount": 32000,
            "payment_method": "QRIS",
            "payment_details": {"invoice_id": f"INV-{i:08X}"},
            "timestamp": iso,
        }
    )
    headers = {"content-type": "application/json", "x-pwa-signature": "<hmac>"}
    return "partner", headers, body, f"partner:{booking}:{event}:LUNAS:{iso}", event


def signed_headers(provider: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
    """The real credentials, for the fidelity check against the real verifiers."""
    real = dict(headers)
    if provider == "mayar":
        real["x-callback-token"] = SETTINGS.mayar_token or ""
    elif provider == "xendit":
        real["x-callback-token"] = SETTINGS.xendit_token or ""
    elif provider == "partner":
        secret = (SETTINGS.partner_secret or "").encode()
        real["x-pwa-signature"] = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return real


def check_fidelity(n: int, every: int = 997) -> None:
    """Sampled events must be accepted by the real verifiers with the same key and kind."""
    for i in range(0, n, every):
        provider, headers, body, key, kind = delivery(i)
        accepted = PROVIDERS[provider].accept(signed_headers(provider, headers, body), body)
        if (accepted.dedup_key, accepted.kind) != (key, kind):
            raise SystemExit(f"generator drifted from {provider}: {accepted} != {(key, kind)}")


def _delivery_row(i: int) -> Row:
    provider, headers, body, key, kind = delivery(i)
    stamp, _ = _ts(i)
    state = DeliveryState(
        originator_topic=DELIVERY_TOPIC,
        timestamp=stamp,
        provider=provider,
        dedup_key=key,
        kind=kind,
        source="127.0.0.1",
        scheme=PROVIDERS[provider].scheme,
        headers=kept_headers(headers),
        body_sha256=hashlib.sha256(body).hexdigest(),
        body_b64=base64.b64encode(body).decode("ascii"),
    )
    return delivery_id(key), 1, RECEIVED_TOPIC, encode_state(state)


def _registration_row(i: int) -> Row:
    """A merchant's registration of the Midtrans order or Xendit booking of event ``i``
    (at most one per order: orders span 40 and 30 events, registrations come every 50)."""
    stamp, _ = _ts(i)
    if (i // REGISTER_EVERY) % 2:
        provider, order, amount, booking = "xendit", f"booking-{i // 30:08d}", "32000", f"BK-{i}"
    else:
        provider, order, amount, booking = "midtrans", f"INV-{i // 40:08d}", "299000", None
    state = RegisteredState(
        originator_topic=REGISTRATION_TOPIC,
        timestamp=stamp,
        provider=provider,
        order_id=order,
        customer=f"customer{(i * 7919) % 20000}@example.id",
        amount=amount,
        currency="IDR",
        booking_id=booking,
        key_id="bench",
    )
    return registration_id(provider, order), 1, REGISTERED_TOPIC, encode_registered(state)


def _answer_row(i: int) -> Row:
    """Midtrans' status API answering ``settlement`` for the order of event ``i``."""
    stamp, iso = _ts(i)
    order, gross, key = f"INV-{i // 40 + 7:08d}", "299000.00", SETTINGS.midtrans_server_key or ""
    body = JSON.encode(
        {
            "transaction_time": iso.replace("T", " ")[:19],
            "transaction_status": "settlement",
            "transaction_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"answer-{i}")),
            "status_message": "Success, transaction is found",
            "status_code": "200",
            "signature_key": hashlib.sha512(f"{order}200{gross}{key}".encode()).hexdigest(),
            "payment_type": "bank_transfer",
            "order_id": order,
            "merchant_id": "G000000000",
            "gross_amount": gross,
            "currency": "IDR",
        }
    )
    state = CheckedState(
        originator_topic=RECONCILIATION_TOPIC,
        timestamp=stamp,
        provider="midtrans",
        order_id=order,
        check_id=f"bench-{i}",
        http_status=200,
        body_sha256=hashlib.sha256(body).hexdigest(),
        body_b64=base64.b64encode(body).decode("ascii"),
        reading="paid",
        provider_status="settlement",
    )
    oid = check_event_id(f"bench-{i}", "midtrans", order)
    return oid, 1, CHECKED_TOPIC, encode_checked(state)


def rows(start: int, stop: int) -> list[Row]:
    """The log for deliveries ``start`` to ``stop``, with the registrations and answers
    that come after them."""
    out = []
    for i in range(start, stop):
        out.append(_delivery_row(i))
        if i % REGISTER_EVERY == 7:
            out.append(_registration_row(i))
        if i % ANSWER_EVERY == 999:
            out.append(_answer_row(i))
    return out


def count(n: int) -> int:
    """How many events ``rows(0, n)`` makes."""
    regs = len(range(7, n, REGISTER_EVERY))
    return n + regs + len(range(999, n, ANSWER_EVERY))
