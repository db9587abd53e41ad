"""The ledger's domain events, as eventsourcing aggregates and events.

Every verified delivery is the creation event of its own ``Delivery`` aggregate, whose id is
derived from the provider's dedup key (``delivery_id``). The primary key of the log,
``(originator_id, originator_version)``, therefore makes dedup race-free across processes.

Events are permanent contracts: add fields only with defaults, never rename or retype a
field; bump ``class_version`` and add ``upcast_vN_vM`` when one must change. Every field is
JSON-native (str, int, bool, None, dict) so the stored state round-trips exactly through
``MsgspecTranscoder`` and eventsourcing's ``Mapper``.

This module imports nothing from the outer layers.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Transcoder

# Namespace for deterministic ids derived from dedup keys.
LEDGER_NAMESPACE = uuid.UUID("6f1c7a52-3e0c-5b8e-9a51-4c2f8f0e7d10")


def delivery_id(dedup_key: str) -> uuid.UUID:
    """The aggregate id of the first delivery recorded under ``dedup_key``."""
    return uuid.uuid5(LEDGER_NAMESPACE, dedup_key)


def conflict_id(dedup_key: str, body_sha256: str) -> uuid.UUID:
    """The id of a delivery that reused ``dedup_key`` with a different body."""
    return uuid.uuid5(LEDGER_NAMESPACE, f"{dedup_key}#{body_sha256}")


# msgspec's encoder serves every Struct; each state has its own prebuilt decoder.
_encoder = msgspec.json.Encoder()
S = TypeVar("S", bound=msgspec.Struct)


class StateCodec(Generic[S]):
    """A state Struct to and from the bytes stored in ``stored_events.state``."""

    def __init__(self, state: type[S]) -> None:
        self._decoder = msgspec.json.Decoder(state)

    def encode(self, state: S) -> bytes:
        return _encoder.encode(state)

    def decode(self, raw: bytes) -> S:
        return self._decoder.decode(raw)


# What eventsourcing's base created event already holds: every stored state carries it.
_BASE_FIELDS = frozenset({"originator_topic", "timestamp"})


def aggregate_for(
    state: type[msgspec.Struct], name: str, created: str, *variants: str
) -> type[Aggregate]:
    """The eventsourcing aggregate whose creation event ``created`` has ``state``'s fields.

    The state Struct is the one declaration of an event's fields: the hot path encodes it
    directly, and eventsourcing generates this aggregate's ``__init__`` and its created event
    from the same fields (its dataclass-style aggregates), so ``Mapper`` reads what we store.
    ``variants`` are further creation events of the same shape (``Delivery.Quarantined``).
    The aggregate and its events live in ``state``'s module under the names stored topics
    use (``ledger.domain:<name>.<created>``).
    """
    fields = {f.name: f.type for f in msgspec.structs.fields(state) if f.name not in _BASE_FIELDS}
    module = state.__module__
    namespace = {"__module__": module, "__qualname__": name, "__annotations__": fields}
    aggregate = type(name, (Aggregate,), namespace, created_event_name=created)
    created_event = getattr(aggregate, created)
    for variant in variants:
        event = type(
            variant, (created_event,), {"__module__": module, "__qualname__": f"{name}.{variant}"}
        )
        setattr(aggregate, variant, event)
    return aggregate


Headers = TypeVar("Headers")
Body = TypeVar("Body")


class DeliveryFields(msgspec.Struct, Generic[Headers, Body], frozen=True, kw_only=True):
    """The one list of a stored delivery's fields, in their stored order.

    ``DeliveryState`` is the contract (``headers: dict[str, str]``, ``body_b64: str``).
    Readers that decode the same bytes with the same fields but want the headers or the
    body typed otherwise (left raw, decoded from base64 by msgspec) subclass it with their
    own types, as ``ledger.audit.rows.StrictDelivery`` and ``ledger.outbox.reading`` do,
    so that a field added here reaches every reading at once. Each subclass restates
    ``frozen=True`` (msgspec inherits it; mypy's dataclass rules want it said).
    """

    originator_topic: str
    timestamp: datetime
    provider: str
    dedup_key: str
    kind: str
    source: str | None
    scheme: str
    headers: Headers
    body_sha256: str
    body_b64: Body
    fault: str | None = None
    original_event_id: str | None = None


class DeliveryState(DeliveryFields[dict[str, str], str], frozen=True):
    """The stored state of every Delivery creation event (what ``Mapper`` would write).

    One webhook delivery as received: raw bytes, who sent it, how it was verified. The three
    creation events share this shape and differ in meaning: ``Received`` is applied by
    projections, ``Quarantined`` was authenticated but unusable (``fault`` says why),
    ``Conflicted`` reused a dedup key with a different body (``original_event_id`` names the
    first one); the last two go to the review queue. Its fields are ``DeliveryFields``'.

    The hot path encodes this Struct directly (one msgspec call) instead of building an
    aggregate; a test proves eventsourcing's Mapper decodes the bytes into ``Delivery``'s events.
    """


# Every delivery is the creation event of its own aggregate (the Struct's docstring).
Delivery = aggregate_for(DeliveryState, "Delivery", "Received", "Quarantined", "Conflicted")

DELIVERY_TOPIC = "ledger.domain:Delivery"
RECEIVED_TOPIC = "ledger.domain:Delivery.Received"
QUARANTINED_TOPIC = "ledger.domain:Delivery.Quarantined"
CONFLICTED_TOPIC = "ledger.domain:Delivery.Conflicted"
DELIVERY_TOPICS = (RECEIVED_TOPIC, QUARANTINED_TOPIC, CONFLICTED_TOPIC)


class OperatorActionState(msgspec.Struct, frozen=True, kw_only=True):
    """The stored state of ``OperatorAction.Recorded`` (what ``Mapper`` would write).

    Something an operator did (key create/revoke, projection rebuild, outbox retry...), one
    aggregate per action. ``key_id`` and ``scope`` say who acted with what authority
    (``cli:<user>``/``local`` for the command line), ``target`` what was acted on, and
    ``reason`` why: it is required, so the trail explains itself.
    """

    originator_topic: str
    timestamp: datetime
    key_id: str
    scope: str
    action: str
    target: str
    reason: str


OperatorAction = aggregate_for(OperatorActionState, "OperatorAction", "Recorded")

OPERATOR_TOPIC = "ledger.domain:OperatorAction"
OPERATOR_ACTION_TOPIC = "ledger.domain:OperatorAction.Recorded"

_delivery = StateCodec(DeliveryState)
encode_state, decode_delivery = _delivery.encode, _delivery.decode
_operator_action = StateCodec(OperatorActionState)
encode_operator_action, decode_operator_action = _operator_action.encode, _operator_action.decode


class MsgspecTranscoder(Transcoder):
    """eventsourcing ``Transcoder`` over msgspec JSON.

    Values are JSON-native except the base event ``timestamp``, which is written as ISO 8601
    and read back as an aware ``datetime`` so eventsourcing's aggregates mutate as usual.
    """

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder()

    def encode(self, obj: Any) -> bytes:
        return self._encoder.encode(obj)

    def decode(self, data: bytes) -> Any:
        obj = self._decoder.decode(data)
        if isinstance(obj, dict) and isinstance(obj.get("timestamp"), str):
            obj["timestamp"] = datetime.fromisoformat(obj["timestamp"])
        return obj


class SpendState(msgspec.Struct, frozen=True, kw_only=True):
    """The stored state of ``TokenSpend.Spent`` (what ``Mapper`` would write).

    A customer spent tokens (``POST /v1/accounts/{customer}/spend``). One aggregate per
    spend, its id derived from the customer and the client's idempotency key (``spend_id``),
    so repeating a request finds the first event instead of spending again.
    ``balance_after`` is the balance the spend left, decided under the customer's lock; it
    is the answer a repeated request gets.
    """

    originator_topic: str
    timestamp: datetime
    customer: str
    amount: int
    idempotency_key: str
    reason: str
    balance_after: int


TokenSpend = aggregate_for(SpendState, "TokenSpend", "Spent")

SPEND_TOPIC = "ledger.domain:TokenSpend"
SPENT_TOPIC = "ledger.domain:TokenSpend.Spent"

_spend = StateCodec(SpendState)
encode_spend, decode_spend = _spend.encode, _spend.decode


def spend_id(customer: str, idempotency_key: str) -> uuid.UUID:
    """The id of the spend a customer asked for under ``idempotency_key``."""
    return uuid.uuid5(LEDGER_NAMESPACE, f"spend:{customer}\x00{idempotency_key}")


class CheckedState(msgspec.Struct, frozen=True, kw_only=True):
    """The stored state of ``Reconciliation.Checked`` (what ``Mapper`` would write).

    One answer of a provider's status API about one order (ADR 0017). The raw answer is
    kept (``body_b64``, its ``body_sha256``, the ``http_status``) beside our ``reading`` of
    it: an order status (``ledger.payments.orderstatus``), or ``unknown_order``,
    ``unverified`` (the answer's signature does not verify: recorded, never applied) or
    ``refused`` (an answer that is no status: 401, 403, other 4xx). ``check_id`` names the
    check that asked: one event per check and order.
    """

    originator_topic: str
    timestamp: datetime
    provider: str
    order_id: str
    check_id: str
    http_status: int
    body_sha256: str
    body_b64: str
    reading: str
    provider_status: str | None = None


Reconciliation = aggregate_for(CheckedState, "Reconciliation", "Checked")

RECONCILIATION_TOPIC = "ledger.domain:Reconciliation"
CHECKED_TOPIC = "ledger.domain:Reconciliation.Checked"

_checked = StateCodec(CheckedState)
encode_checked, decode_checked = _checked.encode, _checked.decode


def check_event_id(check_id: str, provider: str, order_id: str) -> uuid.UUID:
    """The id of the answer one check got about one order (ADR 0017)."""
    return uuid.uuid5(LEDGER_NAMESPACE, f"reconcile:{check_id}\x00{provider}\x00{order_id}")
