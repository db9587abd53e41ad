"""Ingest: a verified delivery becomes an event, committed before anyone is told "accepted".

    raw bytes -> provider.accept (verify, then decode) -> dedup key -> Delivery event
              -> group commit -> Outcome (accepted | duplicate | quarantined)

Unauthorized deliveries raise and leave no trace. Authenticated but unusable deliveries are
still recorded (``Delivery.Quarantined``) so nothing a provider said is lost. A dedup key
seen before with a different body is recorded once as ``Delivery.Conflicted`` for review
and never applied.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import msgspec

from ledger.domain.events import (
    CONFLICTED_TOPIC,
    DELIVERY_TOPIC,
    QUARANTINED_TOPIC,
    RECEIVED_TOPIC,
    DeliveryState,
    conflict_id,
    decode_delivery,
    delivery_id,
    encode_state,
)
from ledger.errors import LedgerError
from ledger.ingest.providers import Provider, Unauthorized, Unusable
from ledger.ingest.providers.base import check_single, kept_headers
from ledger.ingest.safetext import escape
from ledger.metrics import Metrics
from ledger.store.eventstore import Appended, GroupCommitter, NewEvent

log = logging.getLogger("ledger.ingest.service")

Status = Literal["accepted", "duplicate", "quarantined"]


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    event_id: str
    position: int
    dedup_key: str
    fault: str | None = None
    flag: str | None = None


class UnknownProvider(LedgerError):
    pass


class Ingest:
    """Turns one HTTP delivery into one durable event (or a refusal), and counts both in
    ``metrics`` (so the webhook route needs no second dependency: litestar resolves two
    dependencies of a handler concurrently, in an anyio task group per request)."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        committer: GroupCommitter,
        metrics: Metrics | None = None,
    ) -> None:
        self.providers = providers
        self.committer = committer
        self.metrics = metrics or Metrics()

    async def receive(
        self,
        provider: str,
        headers: Mapping[str, str],
        body: bytes,
        source: str | None,
        *,
        repeated: Collection[str] = (),
    ) -> Outcome:
        """``repeated``: header names the request carried more than once (a repeated
        credential header is refused, see ``providers.base.check_single``)."""
        p = self.providers.get(provider)
        if p is None:
            raise UnknownProvider(provider)
        started = time.perf_counter()
        sha = hashlib.sha256(body).hexdigest()
        fault: str | None = None
        try:
            check_single(repeated)  # raises Unauthorized: nothing recorded
            accepted = p.accept(headers, body)  # raises Unauthorized: nothing recorded
            key, kind, topic = accepted.dedup_key, accepted.kind, RECEIVED_TOPIC
        except Unauthorized:
            self.metrics.refused(provider)
            raise
        except Unusable as exc:
            # The quarantine event holds the raw bytes (base64 in the bytea state) and only
            # our own, escaped, words about them: it always stores, and nothing in it is
            # interpreted from the unusable payload.
            key, topic = f"{provider}:quarantine:{sha}", QUARANTINED_TOPIC
            kind, fault = escape(exc.kind[:64]), escape(str(exc))
        state = DeliveryState(
            originator_topic=DELIVERY_TOPIC,
            timestamp=datetime.now(UTC),
            provider=provider,
            dedup_key=key,
            kind=kind,
            source=None if source is None else escape(source[:256]),
            scheme=p.scheme,
            headers=kept_headers(headers),
            body_sha256=sha,
            body_b64=base64.b64encode(body).decode("ascii"),
            fault=fault,
        )
        res = await self.committer.append(NewEvent(delivery_id(key), topic, encode_state(state)))
        outcome = self._outcome(res, key, sha, fault)
        if outcome is None:  # same key, different body: keep it for review, apply nothing
            conflicted = msgspec.structs.replace(
                state,
                fault="dedup key already recorded with a different body",
                original_event_id=str(res.id),
            )
            cres = await self.committer.append(
                NewEvent(conflict_id(key, sha), CONFLICTED_TOPIC, encode_state(conflicted))
            )
            outcome = Outcome(
                "duplicate" if cres.duplicate else "accepted",
                str(cres.id),
                cres.position,
                key,
                fault=conflicted.fault,
                flag="dedup-conflict",
            )
        self.metrics.recorded(provider, outcome.status)
        self.metrics.timed(provider, time.perf_counter() - started)
        log.info(
            "webhook provider=%s dedup_key=%s outcome=%s position=%d%s",
            provider,
            key,
            outcome.status,
            outcome.position,
            f" flag={outcome.flag}" if outcome.flag else "",
        )
        return outcome

    @staticmethod
    def _outcome(res: Appended, key: str, sha: str, fault: str | None) -> Outcome | None:
        if not res.duplicate:
            status: Status = "quarantined" if fault else "accepted"
            return Outcome(status, str(res.id), res.position, key, fault=fault)
        stored = decode_delivery(res.state)
        if stored.body_sha256 != sha:
            return None
        if res.topic == QUARANTINED_TOPIC:
            return Outcome("quarantined", str(res.id), res.position, key, fault=stored.fault)
        return Outcome("duplicate", str(res.id), res.position, key)
