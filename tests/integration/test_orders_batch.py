"""The orders projection's batch path (binary COPY of the notes, the body decoded with the
state) writes exactly the rows of the reference path (``note`` of ``delivery_head``,
inserted with ``unnest ... ON CONFLICT DO NOTHING``), through the real database; a replayed
batch, whole or in part, changes nothing."""

from __future__ import annotations

from collections.abc import Sequence

from ledger.database import Conn
from ledger.domain.events import RECEIVED_TOPIC
from ledger.payments.rules import columns, delivery_head
from ledger.projections.orders import SQL, Orders, note, order_note
from ledger.store.eventstore import StoredRecord
from tests.support.db import connection
from tests.support.readmodels import digest, fold, post, query, read_log


class ReferenceOrders(Orders):
    """The notes made and inserted the way the projection did before the COPY path."""

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        notes = [
            n
            for rec in records
            if rec.topic == RECEIVED_TOPIC and (n := note(rec, delivery_head(rec.state)))
        ]
        if notes:
            await conn.execute(SQL["insert_history"], *columns(notes))


async def _post_mix(client) -> None:  # type: ignore[no-untyped-def]
    for i in range(12):
        await post(client, "midtrans", "pending", order_id=f"INV-{i}", transaction_id=f"t{i}")
        await post(client, "midtrans", "settlement", order_id=f"INV-{i}", transaction_id=f"t{i}")
        await post(client, "xendit", "PAID", order_id=f"BOOK-{i}", amount="32000")
        await post(client, "partner", "booking.paid", order_id=f"b-{i}")
        await post(client, "mayar", "payment.success", customer=f"c{i}@x.com", package="silver")
    await post(client, "midtrans", "refund", order_id="INV-1", transaction_id="t1")
    await post(client, "midtrans", "capture", order_id="INV-99", fraud_status="challenge")


async def test_copy_path_writes_the_reference_rows_and_replays_are_no_ops(client, database_url):
    await _post_mix(client)
    records = await read_log(database_url)
    received = [r for r in records if r.topic == RECEIVED_TOPIC]
    notes = [n for n in map(order_note, received) if n]
    assert len(notes) == 12 * 4 + 2  # every order provider's delivery, no Mayar one
    assert notes == [n for r in received if (n := note(r, delivery_head(r.state)))]
    async with connection(database_url) as conn:
        proj = Orders()
        await fold(conn, ReferenceOrders(), records, "t_orders_ref", batch=17)
        await fold(conn, proj, records, "t_orders_copy", batch=17)
        reference = await digest(conn, proj, "t_orders_ref")
        assert await digest(conn, proj, "t_orders_copy") == reference
        rows = await query(conn, "t_orders_copy", "SELECT count(*) AS n FROM order_history")
        assert rows[0]["n"] == len(notes)

        # A replay of everything (every key there: the COPY fails, the insert skips them)
        # and of a batch half old, half new (the new half is written by the fallback).
        half = len(received) // 2
        await fold(conn, proj, received[:half], "t_orders_replay", batch=1000)
        for batch in (received[: half // 2] + received[half:], received):
            async with conn.transaction():
                await conn.execute("SET LOCAL search_path TO t_orders_replay, public")
                await proj.apply(conn, batch)
        assert await digest(conn, proj, "t_orders_replay") == reference
