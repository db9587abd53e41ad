"""Scale benchmark: every figure of issue 11 goal 3 on the empty log and at N events.

    python bench/scale.py                          # N = 10,000,000 (~24 GB, ~30 min)
    python bench/scale.py --events 200000 --baseline 50000 --rebuild-seconds 30

PostgreSQL: a fresh embedded server in a temporary directory (``--tmp``, default the system
temp dir; removed at the end), sized as ``ledger serve`` sizes its own and as docs/deploy.md
sizes a primary (``shared_buffers`` a quarter of the memory; ADR 0032; printed), its
superuser URL used as the owner of two databases.
Everything listens on 127.0.0.1; the run stops by itself.

1. **Bulk load** of ``--baseline`` events into a database, then (after measuring)
   up to ``--events``. The events are the providers' mix (``event()``: Midtrans, Xendit,
   Mayar and partner; ~100 customers active per 20,000 events, each meeting every slot of
   the mix, an order's notifications naming one customer), made as the ingest path stores
   them but from templates (``fast_row``): ``ledger.ingest.samples.build`` and
   ``encode_state`` make one body and state per (provider, event, shape) with sentinel
   values, which become fields filled per event (ids, amounts, customers, times, the
   Midtrans signature); the dedup key is the provider's formula, the id ``delivery_id``'s.
   One row in ~1,000 goes through the provider's real ``accept`` (signature verified) and
   must give the same key, id and state bytes, or the load stops (``check_row``; the test
   ``tests/integration/test_bench_scale_loader.py`` checks every slot). Two processes make
   the rows with their positions; this process chains each hash (``sha256(previous ||
   message)``, migration 0003, ``ledger.audit.chain``) and streams everything through one
   binary COPY with ``session_replication_role = replica`` in this session only (the
   table's triggers, which would compute the same hash row by row, are neither altered nor
   disabled for anyone else); the sequence is then moved past the last position. While
   loading, the bench's own server checkpoints less often (``max_wal_size``,
   ``checkpoint_timeout``; reset and checkpointed before anything is measured). ``ledger
   verify`` checks every hash afterwards.
2. **At the baseline and at N**, in this order, each with the 1-minute load average beside
   it: the log settled as a log that grew in service is (``VACUUM (ANALYZE)``, a checkpoint;
   timed apart, ``settle``); ``ledger verify`` (the CLI; its own rate and the wall time with
   start-up); the audit index catch-up over the events loaded since the last step
   (``ledger.audit.index.catch_up``), then the index settled the same way; bytes on disk per
   event; a blue/green rebuild of every projection, one at a time, with ``ledger projections
   rebuild`` (bounded by ``--rebuild-seconds`` each: a rebuild still running then is
   stopped, its rate is events folded / time, and the estimate for all N is printed); all of
   them at once with ``ledger projections rebuild --all`` (folded concurrently, one process
   per CPU, ADR 0026; bounded by ``--rebuild-seconds`` times the number of projections, then
   stopped, abandoned and extrapolated from the events folded); ``ledger serve`` (everything
   on) and, once nothing runs behind them (``wait_quiet``: the server idle, no autovacuum,
   the load average low, or ``--quiet-seconds`` passed; printed), one request at a time,
   300 of each: an order timeline, an order's status as of a
   past instant, a customer's token balance as of a past instant and a customer timeline
   (p50/p99); a CSV export streamed for at most
   ``--export-seconds`` (rows/s); server RSS.
3. **Ingest, empty log against N**, in ``--ingest-rounds`` paired rounds in one window
   (``paired_ingest``): a fresh empty database beside the one at N, a ``ledger serve`` as
   the README runs it on each (projections, outbox and audit index on); each round makes
   fresh, distinct, correctly signed Midtrans settlements (``ledger.ingest.samples.build``)
   and ``wrk -t1 -c64`` posts them to one server then the other for ``--ingest-seconds``
   after a 2 s warm-up on bodies of its own (the first of the pair alternates). Prints each
   round's requests/s, p50/p99 and CPU per request (serve's processes and PostgreSQL's), the
   ratio round by round and its median (the figure judged: a round's two runs share their
   window's load, two rounds do not), each side's medians and both servers' RSS.
4. A summary: each figure at the baseline and at N, the ratio and the target.

Before the rebuilds at N the live generations are marked caught up at the head (they would
otherwise fold the bulk-loaded events while being timed, and ``ledger serve`` would fold
them while ingest is measured): a bench-only UPDATE of ``projection_tracking`` as the owner.
A rebuild that the bound stopped is abandoned the same way (``building_generation`` NULL).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# bench/ would shadow the ``projections`` package the app imports: put the repository first.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [str(Path(_HERE).parent), *(p for p in sys.path if p not in ("", _HERE))]

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402

from ledger.app import prepare_database  # noqa: E402
from ledger.audit import chain  # noqa: E402
from ledger.audit import index as audit  # noqa: E402
from ledger.audit.keys import create_key  # noqa: E402
from ledger.database import create_database, create_pool, drop_database  # noqa: E402
from ledger.domain.events import (  # noqa: E402
    DELIVERY_TOPIC,
    LEDGER_NAMESPACE,
    RECEIVED_TOPIC,
    DeliveryState,
    decode_delivery,
    delivery_id,
    encode_state,
)
from ledger.embedded import embedded_server, machine_memory  # noqa: E402
from ledger.ingest.providers import build_providers  # noqa: E402
from ledger.ingest.providers.base import hmac_sha256_hex, kept_headers, secret_list  # noqa: E402
from ledger.ingest.providers.midtrans import signature  # noqa: E402
from ledger.ingest.samples import MIDTRANS_STATUS_CODES, build  # noqa: E402
from ledger.payments.rules import raw_body  # noqa: E402
from tests.support import SECRETS, test_settings  # noqa: E402

LEDGER = [sys.executable, "-m", "ledger"]
SETTINGS = test_settings()
PROVIDERS = build_providers(SETTINGS)
T0 = datetime(2025, 1, 1, tzinfo=UTC)
STEP = timedelta(seconds=2.5)  # 10M events span ~290 days, all before the run
CYCLE = 20  # one cycle of the providers' mix (see ``event``)
BLOCK = 20_000  # events per block of 100 active customers (~170 events each)


# -- the load average and small helpers -------------------------------------------------


def load1() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def loads() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (``ledger serve --workers``)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its live descendants."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


# -- realistic events, as the ingest path stores them -----------------------------------


def customer(i: int) -> str:
    """Customers are active in blocks: ~100 per 20,000 events, so a timeline holds ~170
    entries whatever the log's size (only the log grows, not each customer). The offset
    moves by 13 every cycle so that each customer meets every slot of the mix (Mayar
    purchases and Midtrans and Xendit orders), not a single one (``i * 7919 % 100``
    alone ties a customer to one slot, as 7919 = -1 modulo 20)."""
    return f"c{(i // BLOCK) * 100 + (i * 7919 + (i // CYCLE) * 13) % 100}@example.id"


def stamp(i: int) -> datetime:
    return T0 + STEP * i


def order_of(i: int) -> tuple[str, int]:
    """Midtrans order for event ``i`` (slots 7-12 of a cycle: three orders, two
    notifications each) and the index of its first notification."""
    c, s = divmod(i, CYCLE)
    k = (s - 7) // 2
    return f"INV-S{c * 3 + k:09d}", c * CYCLE + 7 + 2 * k


def event(i: int) -> tuple[str, str, dict[str, str]]:
    """Event ``i`` (deterministic in ``i`` but for the random ids ``build`` draws):
    (provider, event, build keyword arguments). The mix per cycle of 20: 7 Mayar (5 token
    purchases, 1 subscription event, 1 pending payment), 6 Midtrans (3 orders: pending then
    settlement, or expire for one in ten), 4 Xendit (2 invoices: PENDING then PAID) and 3
    partner bookings."""
    c, s = divmod(i, CYCLE)
    who = customer(i)  # an order's notifications name its first one's customer (below)
    if s < 7:
        mayar = ("payment.success",) * 5 + ("subscription.activated", "payment.pending")
        ev = mayar[s]
        kw = {"customer": who, "amount": "50000" if c % 3 else "250000"}
        if ev == "payment.success":
            kw["package"] = "silver" if c % 3 else "gold"
        return "mayar", ev, kw
    if s < 13:
        order, first = order_of(i)
        o = int(order[5:])
        ev = "pending" if i == first else "expire" if o % 10 == 9 else "settlement"
        tx = str(uuid.uuid5(uuid.NAMESPACE_URL, order))
        amount = f"{(o % 50 + 1) * 10000}.00"
        return (
            "midtrans",
            ev,
            {
                "order_id": order,
                "customer": customer(first),
                "amount": amount,
                "transaction_id": tx,
            },
        )
    if s < 17:
        inv = f"xnd-{c * 2 + (s - 13) // 2:09d}"
        ev = "PENDING" if (s - 13) % 2 == 0 else "PAID"
        first = c * CYCLE + 13 + (s - 13) // 2 * 2
        return "xendit", ev, {"order_id": inv, "customer": customer(first), "amount": "32000"}
    return "partner", "booking.paid", {"order_id": f"BK-{c * 3 + s - 17:09d}", "amount": "32000"}


# -- the fast path: templates made by the real code, filled per event ---------------------
#
# ``stored_rows`` costs ~56 us of Python per event (build's json.dumps, the provider's full
# decode and checks, ...), which bounds a 2-process load to 5-14k events/s. The loader
# instead asks ``build`` once per (provider, event, shape) for a body whose variable values
# are sentinels, turns those into ``%`` fields (``Template``), and fills the fields per event:
# the same keys in the same order, the same separators, the same signature formula. The
# dedup key is the provider's own formula and the stored state is still ``encode_state`` of
# a ``DeliveryState``; ``check_row`` runs the real ``accept`` on a sample of the rows made
# (and ``tests/unit/test_bench_scale.py`` on every slot of several cycles) and fails the
# load if a body, a key, an id or a state differs from what the ingest path would store.

_SENT = {
    "order": "QQORDERQQ",
    "cust": "qqcustqq@example.id",
    "amount": "987654321",
    "tx": "QQTXQQ",
    "pkg": "QQPKGQQ",
}
CHECK_EVERY = 997  # one row in ~1,000 goes through the real ``accept`` while loading


@dataclass(frozen=True)
class Template:
    provider: str
    event: str
    body: str  # ``%(field)s`` placeholders, literal ``%`` doubled
    headers: dict[str, str]
    scheme: str
    state: str = ""  # encode_state's output with ``%(ts)s %(key)s %(sha)s %(b64)s`` fields


def _state_template(provider: str, ev: str, headers: dict[str, str], scheme: str) -> str:
    """``encode_state`` of a ``DeliveryState`` whose varying values are sentinels, made a
    ``%`` template (``check_row`` compares a filled one with the encoder's own output)."""
    sent = {"ts": "2999-01-01T00:00:00Z", "key": "QQKEYQQ", "sha": "QQSHAQQ", "b64": "QQB64QQ"}
    text = encode_state(
        DeliveryState(
            originator_topic=DELIVERY_TOPIC,
            timestamp=datetime(2999, 1, 1, tzinfo=UTC),
            provider=provider,
            dedup_key=sent["key"],
            kind=ev,
            source="127.0.0.1",
            scheme=scheme,
            headers=headers,
            body_sha256=sent["sha"],
            body_b64=sent["b64"],
        )
    ).decode()
    text = text.replace("%", "%%")
    for name, value in sent.items():
        assert text.count(value) == 1, (provider, ev, name)
        text = text.replace(value, f"%({name})s")
    return text


def _template(provider: str, ev: str, **kw: str) -> Template:
    """``build``'s body with every value that varies per event made a ``%`` field: the
    sentinels passed in, and the values ``build`` draws itself (random ids, clock times)."""
    d = build(SETTINGS, provider, ev, **kw)
    text = d.body.decode().replace("%", "%%")
    doc = json.loads(d.body)
    drawn: dict[str, str] = {}  # value build drew -> field
    if provider == "midtrans":
        drawn = {doc["signature_key"]: "sig", doc["transaction_time"]: "tt"}
    elif provider == "mayar":
        data = doc["data"]
        drawn = {data["id"]: "uuid", data["createdAt"]: "now"}
        if "licenseCode" in data:
            drawn[data["licenseCode"]] = "lic"
    elif provider == "xendit":
        drawn = {doc["id"]: "xid", doc["user_id"]: "uid", doc["created"]: "now"}
    elif provider == "partner":
        drawn = {doc["payment_details"]["invoice_id"]: "pinv", doc["timestamp"]: "now"}
    for value, name in drawn.items():
        assert text.count(f'"{value}"') >= 1, (provider, ev, value)
        text = text.replace(f'"{value}"', f'"%({name})s"')
    for name, value in _SENT.items():
        text = text.replace(value, f"%({name})s")
    headers = kept_headers(d.headers)
    scheme = PROVIDERS[provider].scheme
    return Template(
        provider, ev, text, headers, scheme, _state_template(provider, ev, headers, scheme)
    )


_TEMPLATES: dict[tuple[str, str, bool], Template] = {}


def template(provider: str, ev: str, package: bool) -> Template:
    key = (provider, ev, package)
    t = _TEMPLATES.get(key)
    if t is None:
        kw = {k: _SENT[k] for k in ("order", "cust", "amount")}
        if provider == "mayar":
            kw.pop("order")
            if package:
                kw["pkg"] = _SENT["pkg"]
        elif provider == "midtrans":
            kw["amount"] += ".00"
            kw["tx"] = _SENT["tx"]
        elif provider == "partner":
            kw.pop("cust")
        names = {"order": "order_id", "cust": "customer", "pkg": "package", "tx": "transaction_id"}
        t = _TEMPLATES[key] = _template(provider, ev, **{names.get(k, k): v for k, v in kw.items()})
        if provider == "midtrans":
            # the sentinel amount keeps its ".00" in the template: the field is the whole value
            body = t.body.replace("%(amount)s.00", "%(amount)s")
            t = _TEMPLATES[key] = Template(t.provider, t.event, body, t.headers, t.scheme, t.state)
    return t


_MIDTRANS_KEY = (secret_list(SETTINGS.midtrans_server_key) or [""])[0]
_NS = LEDGER_NAMESPACE.bytes
_bits = random.getrandbits


def _uuid5_bytes(name: str) -> bytes:
    """``delivery_id(name).bytes`` (uuid5: SHA-1, version and variant bits) without the
    ``uuid.UUID`` objects; ``check_row`` compares it with ``delivery_id``."""
    h = bytearray(hashlib.sha1(_NS + name.encode(), usedforsecurity=False).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    return bytes(h)


def _uuid4() -> str:
    h = f"{_bits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_DAYS: dict[int, str] = {}


def _clock(i: int) -> str:
    """``stamp(i)`` as the providers write times ("2025-01-01T00:00:17.000Z", whole
    seconds as ``build`` writes them) without a ``strftime`` per event."""
    t = i * 5 // 2  # STEP is 2.5 s
    day, sec = divmod(t, 86_400)
    prefix = _DAYS.get(day)
    if prefix is None:
        prefix = _DAYS[day] = (T0 + timedelta(days=day)).strftime("%Y-%m-%dT")
    h, rem = divmod(sec, 3600)
    return f"{prefix}{h:02d}:{rem // 60:02d}:{rem % 60:02d}.000Z"


def fast_row(i: int) -> tuple[bytes, bytes, bytes, str]:
    """Event ``i`` (``event(i)``'s provider, event and values) as (id bytes, state, body,
    dedup key), without ``build``/``accept``: a template filled, hashed and encoded."""
    provider, ev, kw = event(i)
    now = _clock(i)
    amount = kw.get("amount", "")
    if provider == "mayar":
        t = template("mayar", ev, "package" in kw)
        pid = _uuid4()
        fields = {
            "uuid": pid,
            "now": now,
            "cust": kw["customer"],
            "amount": amount,
            "pkg": kw.get("package", ""),
            "lic": f"LIC-{_bits(32):08X}",
        }
        key = f"mayar:{pid}:{ev}"
    elif provider == "midtrans":
        t = template("midtrans", ev, False)
        order, code = kw["order_id"], MIDTRANS_STATUS_CODES[ev]
        fields = {
            "order": order,
            "cust": kw["customer"],
            "amount": amount,
            "tx": kw["transaction_id"],
            "tt": f"{now[:10]} {now[11:19]}",
            "sig": signature(order, code, amount, _MIDTRANS_KEY),
        }
        key = f"midtrans:{order}:{kw['transaction_id']}:{ev}:{code}"
    elif provider == "xendit":
        t = template("xendit", ev, False)
        xid = f"{_bits(96):024x}"
        fields = {
            "xid": xid,
            "uid": f"{_bits(96):024x}",
            "now": now,
            "order": kw["order_id"],
            "cust": kw["customer"],
            "amount": amount,
        }
        key = f"xendit:{xid}:{ev}"
    else:
        t = template("partner", ev, False)
        fields = {
            "order": kw["order_id"],
            "amount": amount,
            "now": now,
            "pinv": f"INV-{_bits(24):06X}",
        }
        key = f"partner:{kw['order_id']}:{ev}:LUNAS:{now}"
    body = (t.body % fields).encode()
    state = t.state % {
        # stamp(i) as msgspec writes it: T0 is a whole second and STEP 2.5 s
        "ts": f"{now[:19]}.500000Z" if i & 1 else f"{now[:19]}Z",
        "key": key,  # ASCII without quotes or backslashes: nothing to escape
        "sha": hashlib.sha256(body).hexdigest(),
        "b64": base64.b64encode(body).decode("ascii"),
    }
    return _uuid5_bytes(key), state.encode(), body, key


def check_row(i: int, oid: bytes, state: bytes, body: bytes, key: str) -> None:
    """What the ingest path would have stored for this body: the real ``accept`` (signature
    verified) must derive the same key and kind, the id must be ``delivery_id`` of it, and
    the state must decode to the same delivery and re-encode to the same bytes."""
    provider, ev, _ = event(i)
    t = template(provider, ev, provider == "mayar" and ev == "payment.success")
    headers = dict(t.headers)
    p = PROVIDERS[provider]
    if provider in ("mayar", "xendit"):
        headers["x-callback-token"] = secret_list(getattr(SETTINGS, f"{provider}_token"))[0]
    elif provider == "partner":
        secret = secret_list(SETTINGS.partner_secret)[0]
        headers["x-pwa-signature"] = hmac_sha256_hex(secret, body)
    accepted = p.accept(headers, body)
    d = decode_delivery(state)
    problems = [
        accepted.dedup_key != key and "dedup key",
        accepted.kind != ev and "kind",
        delivery_id(accepted.dedup_key).bytes != oid and "id",
        raw_body(d) != body and "body",
        d.dedup_key != key and "state's dedup key",
        d.timestamp != stamp(i) and "timestamp",
        encode_state(d) != state and "state re-encoding",
        kept_headers(headers) != d.headers and "headers",
    ]
    if any(problems):
        raise SystemExit(f"event {i}: fast row differs from the ingest path: {problems}")


_TOPIC = RECEIVED_TOPIC.encode()
_ROW_HEAD = struct.Struct(f">hi16siqi{len(_TOPIC)}si")  # 6 columns: id, version, topic, state
_ROW_TAIL = struct.Struct(">iqi")  # notification_id, then the hash's length (its bytes follow)
_MSG_HEAD = struct.Struct(f">q16sqi{len(_TOPIC)}si")  # chain.message's layout (migration 0003)


def fast_rows(start: int, stop: int, first_position: int) -> tuple[list[bytes], list[bytes]]:
    """Events ``start..stop-1`` at positions ``first_position...``: (the chain message of
    each, its binary COPY row but for the hash's 32 bytes, which only the loader can add,
    in order). Every ``CHECK_EVERY``-th row is checked against the ingest path."""
    msgs, rows = [], []
    head, tail, mhead = _ROW_HEAD.pack, _ROW_TAIL.pack, _MSG_HEAD.pack
    t, lt = _TOPIC, len(_TOPIC)
    pos = first_position
    for i in range(start, stop):
        oid, state, body, key = fast_row(i)
        if i % CHECK_EVERY == 0:
            check_row(i, oid, state, body, key)
        ls = len(state)
        msgs.append(mhead(pos, oid, 1, lt, t, ls) + state)
        rows.append(head(6, 16, oid, 8, 1, lt, t, ls) + state + tail(8, pos, 32))
        pos += 1
    return msgs, rows


def chunks(start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(start, stop, size):
        yield a, min(stop, a + size)


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
_COPY_TRAILER = b"\xff\xff"
_LOAD_SETTINGS = {"max_wal_size": "8GB", "checkpoint_timeout": "1h"}
_COLUMNS = ["originator_id", "originator_version", "topic", "state", "notification_id", "hash"]


async def bulk_load(
    url: str,
    start: int,
    stop: int,
    *,
    chunk: int = 10_000,
    workers: int = 2,
    max_seconds: float | None = None,
    tune_server: bool = True,
) -> tuple[float, int]:
    """Append events ``start..stop-1`` after the current head with a valid chain (fewer
    when ``max_seconds`` runs out); return the seconds taken and the events loaded.

    ``workers`` processes make the rows (``fast_rows``: the chain message and the binary
    COPY row of each, positions known in advance); this process only chains the hashes
    (``sha256(previous || message)``, migration 0003 and ``ledger.audit.chain``), appends
    each to its row and streams the rows to one binary COPY while the next chunks are made.
    """
    t0 = time.perf_counter()
    conn = await asyncpg.connect(url)
    loop = asyncio.get_running_loop()
    done = 0
    try:
        row = await conn.fetchrow(
            "SELECT notification_id, hash FROM stored_events ORDER BY notification_id DESC LIMIT 1"
        )
        head, prev = (row[0], bytes(row[1])) if row else (0, chain.GENESIS)
        pos = head
        # This session only: the row triggers (the chain hash, computed here identically)
        # and the statement triggers (append lock, NOTIFY) do not fire for our COPY.
        await conn.execute("SET session_replication_role = replica")
        # The bench's own server: no checkpoint (and its full-page images) every ~1 GB of
        # WAL while loading; the defaults are restored before anything is measured.
        settings = _LOAD_SETTINGS if tune_server else {}
        for setting, value in settings.items():
            await conn.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
        if settings:
            await conn.execute("SELECT pg_reload_conf()")
        sha = hashlib.sha256

        with ProcessPoolExecutor(workers) as pool:

            def submit(a: int, b: int) -> asyncio.Future[tuple[list[bytes], list[bytes]]]:
                return loop.run_in_executor(pool, fast_rows, a, b, head + 1 + a - start)

            async def stream() -> Any:
                nonlocal prev, pos, done
                todo = list(chunks(start, stop, chunk))
                window = [submit(a, b) for a, b in todo[: 2 * workers]]
                todo = todo[2 * workers :]
                yield _COPY_HEADER
                while window:
                    msgs, rows = await window.pop(0)
                    late = max_seconds is not None and time.perf_counter() - t0 > max_seconds
                    if todo and not late:
                        window.append(submit(*todo.pop(0)))
                    elif late:
                        for f in window:
                            f.cancel()
                        window = []
                    parts = []
                    for msg, r in zip(msgs, rows, strict=True):
                        prev = sha(prev + msg).digest()
                        parts.append(r)
                        parts.append(prev)
                    yield b"".join(parts)
                    done += len(rows)
                    pos += len(rows)
                    rate = done / (time.perf_counter() - t0)
                    print(
                        f"\r  loaded {done:,}/{stop - start:,} ({rate:,.0f} ev/s, {load1()})",
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )
                yield _COPY_TRAILER

            async with conn.transaction():
                await conn.copy_to_table(
                    "stored_events", source=stream(), columns=_COLUMNS, format="binary"
                )
        await conn.execute("RESET session_replication_role")
        await conn.execute("SELECT setval('stored_events_notification_id_seq', $1)", pos)
        await conn.execute("ANALYZE stored_events")
    finally:
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
            if tune_server:
                for setting in _LOAD_SETTINGS:
                    await conn.execute(f"ALTER SYSTEM RESET {setting}")
                await conn.execute("SELECT pg_reload_conf()")
                await conn.execute("CHECKPOINT")
        await conn.close()
    print(file=sys.stderr)
    return time.perf_counter() - t0, done


# -- ledger serve and wrk ----------------------------------------------------------------

WRK_LUA = r"""
local bodies, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
end
function request()
  i = i + 1
  if i > #bodies then i = 1 end
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
function done(s, lat, req)
  io.write(string.format(
    'RESULT {"requests":%d,"duration_s":%f,"non2xx":%d,"errors":%d,' ..
    '"p50_ms":%f,"p99_ms":%f,"max_ms":%f}\n',
    s.requests, s.duration / 1e6, s.errors.status,
    s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout,
    lat:percentile(50) / 1e3, lat:percentile(99) / 1e3, lat.max / 1e3))
end
"""


def make_bodies(path: Path, n: int) -> None:
    """``n`` distinct, correctly signed Midtrans settlements, one per line."""
    bodies = [build(SETTINGS, "midtrans", "settlement").body for _ in range(n)]
    path.write_bytes(b"\n".join(bodies) + b"\n")


def wrk(url: str, bodies: Path, seconds: float, connections: int, tmp: Path) -> dict[str, Any]:
    script = tmp / "bodies.lua"
    script.write_text(WRK_LUA)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    out = subprocess.run(
        [*cmd, "-s", str(script), url, "--", str(bodies)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT ") :]))


class Serve:
    """``ledger serve`` in its own process group on 127.0.0.1 (stopped with SIGTERM)."""

    def __init__(self, url: str, tmp: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        home = Path(tempfile.mkdtemp(prefix="home-", dir=tmp))
        self.log = home / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        env |= SECRETS | {"LEDGER_DATABASE_URL": url, "LEDGER_HOME": str(home)}
        env |= extra_env or {}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*LEDGER, "serve", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"ledger serve exited with {self.proc.returncode}:\n{tail}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise SystemExit("ledger serve not ready")

    def rss(self) -> int:
        return tree_rss(self.proc.pid)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# -- the measurements --------------------------------------------------------------------


@dataclass
class Figures:
    label: str
    events: int = 0
    values: dict[str, float] = field(default_factory=dict)
    loads: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def put(self, name: str, value: float, note: str = "") -> None:
        self.values[name] = value
        self.loads[name] = os.getloadavg()[0]
        if note:
            self.notes[name] = note


def ingest_run(
    serve: Serve, bodies: Path, seconds: float, tmp: Path, pg_pid: int
) -> dict[str, Any]:
    """A 2 s warm-up on its own bodies, then ``seconds`` of wrk on ``bodies``: every
    delivery distinct. Adds the CPU per request of serve's process tree and PostgreSQL's."""
    url = f"{serve.base}/webhooks/midtrans"
    wrk(url, bodies.with_suffix(".warm"), 2, 64, tmp)
    cpu0 = tree_cpu(serve.proc.pid) + tree_cpu(pg_pid)
    r = wrk(url, bodies, seconds, 64, tmp)
    cpu = tree_cpu(serve.proc.pid) + tree_cpu(pg_pid) - cpu0
    r["rps"] = r["requests"] / r["duration_s"]
    r["cpu_us"] = 1e6 * cpu / max(1, r["requests"])
    return r


async def paired_ingest(
    empty: Figures, at_n: Figures, server: str, url_n: str, tmp: Path, args: argparse.Namespace,
    pg_pid: int,
) -> None:  # fmt: skip
    """Ingest on an empty log and at N, in alternating rounds in one window (the machine
    is shared: two runs minutes apart differed by 14 %). Both ``ledger serve`` run
    throughout (the idle one waits on its own database's notifications); each round posts
    the same fresh bodies to each (distinct databases: no duplicate), in turn, the first
    of the pair alternating. The figures are the medians of the rounds."""
    url_e = await create_database(server, f"scale_empty_{uuid.uuid4().hex[:6]}")
    try:
        await prepare_database(url_e)
        serves = {"empty": Serve(url_e, tmp), "at N": Serve(url_n, tmp)}
        try:
            for serve in serves.values():
                serve.wait_ready()
            await wait_caught_up(url_n)
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in serves}
            n = max(20_000, int(args.ingest_seconds * 8_000))
            for i in range(args.ingest_rounds):
                bodies = tmp / f"bodies-{i}.txt"
                make_bodies(bodies.with_suffix(".warm"), 16_000)
                make_bodies(bodies, n)
                order = list(serves) if i % 2 == 0 else list(serves)[::-1]
                for label in order:
                    r = ingest_run(serves[label], bodies, args.ingest_seconds, tmp, pg_pid)
                    runs[label].append(r)
                    print(
                        f"  ingest round {i + 1} {label:5} (wrk -c64, {args.ingest_seconds:.0f} s):"
                        f" {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.1f} ms,"
                        f" p99 {r['p99_ms']:.1f} ms, CPU {r['cpu_us']:.0f} us/req (serve +"
                        f" PostgreSQL), non-2xx {r['non2xx']}, errors {r['errors']} ({load1()})",
                        flush=True,
                    )
            for label, fig in (("empty", empty), ("at N", at_n)):
                done = runs[label]
                fig.put("ingest_rps", pct([r["rps"] for r in done], 50))
                fig.put("ingest_p99_ms", pct([r["p99_ms"] for r in done], 50))
                fig.put("ingest_cpu_us", pct([r["cpu_us"] for r in done], 50))
                fig.put("rss_mib", serves[label].rss() / 2**20)
            each = [b["rps"] / a["rps"] for a, b in zip(runs["empty"], runs["at N"], strict=True)]
            # The ratio of the pairs, not of the two medians: a round's two runs share their
            # window's load, different rounds do not.
            at_n.put("ingest_rps_paired_ratio", pct(each, 50))
            print(
                "  ingest at N / empty, round by round: "
                + ", ".join(f"{x:.2f}x" for x in each)
                + f" (median {pct(each, 50):.2f}x)"
                + f"; server RSS {empty.values['rss_mib']:.0f} / {at_n.values['rss_mib']:.0f} MiB",
                flush=True,
            )
        finally:
            for serve in serves.values():
                serve.stop()
    finally:
        await drop_database(server, url_e)


def verify(fig: Figures, url: str, home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env |= SECRETS | {"LEDGER_DATABASE_URL": url, "LEDGER_HOME": str(home)}
    t0 = time.perf_counter()
    proc = subprocess.run([*LEDGER, "verify"], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    out = proc.stdout.strip()
    m = re.search(r"intact: (\d+) events.*\(([\d.]+) s, ([\d,]+) events/s\)", out)
    if proc.returncode != 0 or m is None:
        raise SystemExit(f"ledger verify failed ({proc.returncode}): {out} {proc.stderr[-2000:]}")
    checked, rate = int(m[1]), float(m[3].replace(",", ""))
    fig.put("verify_ev_s", rate)
    print(
        f"  ledger verify: intact, {checked:,} events at {rate:,.0f} ev/s "
        f"({wall:.1f} s wall with start-up, {checked / wall:,.0f} ev/s) ({load1()})",
        flush=True,
    )


async def catch_up(fig: Figures, url: str) -> None:
    pool = await create_pool(url, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            before = await conn.fetchval("SELECT position FROM audit_index_tracking")
        t0 = time.perf_counter()
        after = await audit.catch_up(pool)
        took = time.perf_counter() - t0
    finally:
        await pool.close()
    n = after - before
    fig.put("audit_catch_up_ev_s", n / took)
    print(
        f"  audit index catch-up: {n:,} events in {took:.1f} s = {n / took:,.0f} ev/s "
        f"(index then holds {after:,}) ({load1()})",
        flush=True,
    )


async def disk(fig: Figures, url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
        events = await conn.fetchval("SELECT count(*) FROM stored_events")
        log = await conn.fetchval("SELECT pg_total_relation_size('stored_events')")
        idx = await conn.fetchval("SELECT pg_total_relation_size('audit_index')")
        db = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    fig.events = events
    fig.put("bytes_per_event", db / events)
    fig.put("log_bytes_per_event", log / events)
    print(
        f"  on disk: {db / 2**30:.2f} GiB for {events:,} events = {db / events:,.0f} B/event "
        f"(log with its indexes {log / events:,.0f}, audit index {idx / events:,.0f}) ({load1()})",
        flush=True,
    )


async def settle(url: str, table: str) -> None:
    """``VACUUM (ANALYZE)`` and a checkpoint, timed apart from every figure.

    Rows just written by COPY (or the catch-up) are neither hinted nor all-visible: the
    first reader of each page writes its hint bits (the whole log rewritten during
    ``verify``) and index-only scans still visit the heap, while autovacuum's first pass over
    gigabytes competes for the disk with whatever is measured. A log that grew to N events
    in service is vacuumed as it grows (migration 0013, ADR 0028): this is that state."""
    conn = await asyncpg.connect(url)
    try:
        t0 = time.perf_counter()
        await conn.execute(f"VACUUM (ANALYZE) {table}")
        await conn.execute("CHECKPOINT")
        took = time.perf_counter() - t0
    finally:
        await conn.close()
    print(f"  settled {table}: VACUUM (ANALYZE) and CHECKPOINT in {took:.1f} s ({load1()})")


async def head_of(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval("SELECT coalesce(max(notification_id), 0) FROM stored_events")
        )
    finally:
        await conn.close()


async def fast_forward(url: str) -> None:
    """Every projection registered, its live generation caught up at the head, no rebuild
    in progress (bench only: what a rebuild is timed against)."""
    from ledger.readmodels.runner import available, connect, register

    app = await connect(url, "bench-scale")
    try:
        for proj in available().values():
            await register(app, proj)
    finally:
        await app.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "UPDATE projections SET building_generation = NULL, state = 'running', "
            "error = NULL, updated_at = now()"
        )
        await conn.execute(
            "UPDATE projection_tracking t SET position = "
            "(SELECT max(notification_id) FROM stored_events) "
            "FROM projections p WHERE t.name = p.name AND t.generation = p.live_generation"
        )
    finally:
        await conn.close()


async def live_generation(url: str, name: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval("SELECT live_generation FROM projections WHERE name = $1", name)
        )
    finally:
        await conn.close()


async def building_position(url: str, name: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        pos = await conn.fetchval(
            "SELECT t.position FROM projections p JOIN projection_tracking t "
            "ON t.name = p.name AND t.generation = p.building_generation WHERE p.name = $1",
            name,
        )
        return int(pos or 0)
    finally:
        await conn.close()


async def start_rebuild_cli(env: dict[str, str], *what: str) -> asyncio.subprocess.Process:
    """``ledger projections rebuild WHAT...`` in its own process group, stdout piped."""
    return await asyncio.create_subprocess_exec(
        *LEDGER,
        "projections",
        "rebuild",
        *what,
        "--reason",
        "bench/scale.py",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )


async def stop_rebuild_cli(proc: asyncio.subprocess.Process, done: bool) -> None:
    """Stop a rebuild command still running: SIGINT when the bound stopped it (it leaves the
    generation building), SIGTERM once it switched; SIGKILL after 60 s."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT if not done else signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 60)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def rebuilds(fig: Figures, url: str, home: Path, bound: float, head: int) -> None:
    from ledger.readmodels.runner import available

    names = sorted(available())
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env |= SECRETS | {"LEDGER_DATABASE_URL": url, "LEDGER_HOME": str(home)}
    total_estimate = 0.0
    for name in names:
        await fast_forward(url)
        proc = await start_rebuild_cli(env, name)
        assert proc.stdout is not None
        # "rebuild of NAME started generation G": timed from here (not the CLI's start-up)
        # to the switch seen in the database (not the digest the CLI prints afterwards).
        first = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        t0 = time.perf_counter()
        m = re.search(r"generation (\d+)", first)
        if m is None:
            raise SystemExit(f"ledger projections rebuild {name}: {first!r}")
        generation = int(m[1])
        done = False
        while time.perf_counter() - t0 < bound:
            if await live_generation(url, name) == generation:
                done = True
                break
            if proc.returncode is not None:
                raise SystemExit(f"ledger projections rebuild {name} exited {proc.returncode}")
            await asyncio.sleep(0.1)
        took = time.perf_counter() - t0
        folded = head if done else await building_position(url, name)
        await stop_rebuild_cli(proc, done)
        rate = folded / took if took else 0.0
        fig.put(f"rebuild_{name}_ev_s", rate, "" if done else "partial")
        total_estimate += head / rate if rate else float("inf")
        how = "complete" if done else f"stopped after {bound:.0f} s at position {folded:,}"
        print(
            f"  rebuild {name:<15} {rate:>9,.0f} ev/s ({how}, {took:.1f} s) ({load1()})",
            flush=True,
        )
    await fast_forward(url)
    fig.put("rebuild_all_estimate_s", total_estimate)
    fig.put("rebuild_all_10m_estimate_s", total_estimate * 10_000_000 / head)
    print(
        f"  all projections, one after another, over {head:,} events: "
        f"{total_estimate / 60:.1f} min (measured or extrapolated from the rates above)",
        flush=True,
    )


async def rebuild_all(fig: Figures, url: str, home: Path, bound: float, head: int) -> None:
    """``ledger projections rebuild --all`` (every projection started at once and folded
    concurrently, ADR 0026), timed from its last "started" line to the last switch seen in
    the database; stopped after ``bound`` seconds and then extrapolated from the events the
    rebuilds folded (abandoned like a stopped single rebuild)."""
    from ledger.readmodels.runner import available

    names = sorted(available())
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env |= SECRETS | {"LEDGER_DATABASE_URL": url, "LEDGER_HOME": str(home)}
    await fast_forward(url)
    proc = await start_rebuild_cli(env, "--all")
    assert proc.stdout is not None
    generations: dict[str, int] = {}
    for _ in names:
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        m = re.search(r"rebuild of (\S+) .*generation (\d+)", line)
        if m is None:
            raise SystemExit(f"ledger projections rebuild --all: {line!r}")
        generations[m[1]] = int(m[2])
    t0 = time.perf_counter()
    done = False
    while time.perf_counter() - t0 < bound:
        lives = {n: await live_generation(url, n) for n in names}
        if all(lives[n] == g for n, g in generations.items()):
            done = True
            break
        if proc.returncode is not None:
            raise SystemExit(f"ledger projections rebuild --all exited {proc.returncode}")
        await asyncio.sleep(0.2)
    took = time.perf_counter() - t0
    folded = 0
    if not done:
        for n, g in generations.items():
            live = await live_generation(url, n) == g
            folded += head if live else await building_position(url, n)
    await stop_rebuild_cli(proc, done)
    await fast_forward(url)  # abandons what the bound stopped
    total = took if done else took * head * len(names) / max(folded, 1)
    note = "" if done else "extrapolated"
    fig.put("rebuild_all_together_s", total, note)
    fig.put("rebuild_all_together_10m_s", total * 10_000_000 / head, note)
    how = "complete" if done else f"stopped after {bound:.0f} s, {folded:,} events folded"
    print(
        f"  all rebuilds at once (rebuild --all): {total:,.1f} s over {head:,} events "
        f"({how}; {len(names) * head / total:,.0f} ev/s summed) ({load1()})",
        flush=True,
    )


async def wait_caught_up(url: str, timeout: float = 600) -> None:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            behind = await conn.fetchval(
                "SELECT count(*) FROM projections p JOIN projection_tracking t "
                "ON t.name = p.name AND t.generation = p.live_generation "
                "WHERE t.position < (SELECT max(notification_id) FROM stored_events)"
            )
            unindexed = await conn.fetchval(
                "SELECT (SELECT coalesce(max(notification_id), 0) FROM stored_events) - "
                "position FROM audit_index_tracking"
            )
            if behind == 0 and unindexed <= 0:
                return
            await asyncio.sleep(0.5)
        raise SystemExit("projections did not catch up")
    finally:
        await conn.close()


QUIET_LOAD = 0.5  # per core: the 1-minute load average the reads wait for
QUIET_CPU = 0.05  # ledger serve's share of one core, over a second


async def wait_quiet(serve: Serve, url: str, timeout: float) -> None:
    """Before the timed reads, nothing running behind them: ``ledger serve`` idle (its
    projections and the audit index at the head: ``wait_caught_up``; under ``QUIET_CPU``),
    no other session or autovacuum worker active on the server (the rebuilds just
    abandoned leave tables for autovacuum), a checkpoint taken, and the 1-minute load
    average under ``QUIET_LOAD`` per core. Gives up after ``timeout`` seconds and measures
    anyway; what it reached is printed either way (the machine is shared)."""
    conn = await asyncpg.connect(url)
    try:
        t0 = time.monotonic()
        await conn.execute("CHECKPOINT")
        quiet_load = QUIET_LOAD * (os.cpu_count() or 1)
        while True:
            active = await conn.fetch(
                "SELECT backend_type, left(query, 40) AS query FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND state = 'active' "
                "AND backend_type IN ('client backend', 'autovacuum worker')"
            )
            cpu0 = tree_cpu(serve.proc.pid)
            await asyncio.sleep(1)
            cpu = tree_cpu(serve.proc.pid) - cpu0
            load = os.getloadavg()[0]
            quiet = not active and cpu < QUIET_CPU and load < quiet_load
            waited = time.monotonic() - t0
            if quiet or waited > timeout:
                busy = ", ".join(f"{r['backend_type']}: {r['query']!r}" for r in active)
                print(
                    f"  {'quiet' if quiet else 'NOT quiet'} after {waited:.0f} s: load "
                    f"{load:.2f} (wanted < {quiet_load:.1f}), ledger serve {cpu:.2f} s CPU/s, "
                    f"active on the server: {busy or 'nothing'}",
                    flush=True,
                )
                return
    finally:
        await conn.close()


async def queries(fig: Figures, serve: Serve, url: str, loaded: int, seconds: float) -> None:
    conn = await asyncpg.connect(url)
    try:
        _, key = await create_key(conn, "bench-scale", ["audit:read"])
    finally:
        await conn.close()
    cycles = loaded // CYCLE
    blocks = max(1, loaded // BLOCK)

    def at(i: int) -> str:
        return stamp(i).strftime("%Y-%m-%dT%H:%M:%S")

    def order_route(k: int) -> tuple[str, dict[str, str]]:
        c = (k * 7_919_633) % cycles
        order, _ = order_of(c * CYCLE + 7)
        return f"/v1/audit/orders/midtrans/{order}", {}

    def order_as_of(k: int) -> tuple[str, dict[str, str]]:
        c = (k * 7_919_633) % cycles
        order, first = order_of(c * CYCLE + 9)
        return f"/v1/audit/orders/midtrans/{order}", {"as_of": at(first + 1)}

    def balance_as_of(k: int) -> tuple[str, dict[str, str]]:
        b = (k * 104_729) % blocks
        i = b * BLOCK + k % 100
        return f"/v1/audit/customers/{customer(i)}/balance", {"as_of": at(i + BLOCK // 2)}

    def customer_timeline(k: int) -> tuple[str, dict[str, str]]:
        b = (k * 104_729) % blocks
        return f"/v1/audit/customers/{customer(b * BLOCK + k % 100)}", {}

    routes = {
        "order_timeline": order_route,
        "order_as_of": order_as_of,
        "balance_as_of": balance_as_of,
        "customer_timeline": customer_timeline,
    }
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=serve.base, headers=headers, timeout=600) as client:
        for name, route in routes.items():
            for k in range(20):  # warm-up
                path, params = route(k + 10_000)
                await client.get(path, params=params)
            lat = []
            for k in range(300):
                path, params = route(k)
                t0 = time.perf_counter()
                r = await client.get(path, params=params)
                lat.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise SystemExit(f"{path} {params}: {r.status_code} {r.text[:500]}")
            fig.put(f"{name}_p99_ms", pct(lat, 99))
            fig.put(f"{name}_p50_ms", pct(lat, 50))
            print(
                f"  {name:<18} p50 {pct(lat, 50):6.1f} ms  p99 {pct(lat, 99):6.1f} ms ({load1()})",
                flush=True,
            )
        rows = 0
        t0 = time.perf_counter()
        params = {"from": "2020-01-01", "to": "2030-01-01", "format": "csv"}
        async with client.stream("GET", "/v1/audit/export", params=params) as r:
            if r.status_code != 200:
                raise SystemExit(f"export: {r.status_code}")
            async for chunk in r.aiter_bytes():
                rows += chunk.count(b"\n")
                if time.perf_counter() - t0 > seconds:
                    break
        took = time.perf_counter() - t0
        fig.put("export_csv_rows_s", rows / took)
        print(
            f"  export CSV: {rows:,} rows in {took:.1f} s = {rows / took:,.0f} rows/s ({load1()})",
            flush=True,
        )


async def measure(fig: Figures, url: str, tmp: Path, args: argparse.Namespace) -> None:
    from ledger.readmodels.runner import available

    head = await head_of(url)
    print(f"{fig.label}: {head:,} events ({loads()})", flush=True)
    await settle(url, "stored_events")
    verify(fig, url, tmp)
    await catch_up(fig, url)
    await settle(url, "audit_index")
    await disk(fig, url)
    await rebuilds(fig, url, tmp, args.rebuild_seconds, head)
    await rebuild_all(fig, url, tmp, args.rebuild_seconds * len(available()), head)
    serve = Serve(url, tmp)
    try:
        serve.wait_ready()
        await wait_caught_up(url)
        await wait_quiet(serve, url, args.quiet_seconds)
        await queries(fig, serve, url, head, args.export_seconds)
        fig.put("rss_mib", serve.rss() / 2**20)
        print(f"  server RSS {fig.values['rss_mib']:.0f} MiB ({load1()})", flush=True)
    finally:
        serve.stop()


async def memory(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        shown = [
            f"{name} {await conn.fetchval(f'SHOW {name}')}"
            for name in ("shared_buffers", "effective_cache_size")
        ]
    finally:
        await conn.close()
    return ", ".join(shown) + f" ({machine_memory() / 2**30:.1f} GiB of memory)"


TARGETS = {
    "ingest_rps": ("ingest req/s (ledger serve, wrk -c64)", ">= 0.9x empty", "ratio>=0.9"),
    "ingest_p99_ms": ("ingest p99 ms", "", ""),
    "ingest_cpu_us": ("ingest CPU us per request (serve + PostgreSQL)", "", ""),
    "verify_ev_s": ("ledger verify ev/s", ">= 250,000", ">=250000"),
    "audit_catch_up_ev_s": ("audit index catch-up ev/s", ">= 50,000", ">=50000"),
    "order_as_of_p99_ms": ("order as-of p99 ms", "<= 10", "<=10"),
    "order_as_of_p50_ms": ("order as-of p50 ms", "", ""),
    "balance_as_of_p99_ms": ("balance as-of p99 ms", "<= 10", "<=10"),
    "balance_as_of_p50_ms": ("balance as-of p50 ms", "", ""),
    "order_timeline_p99_ms": ("order timeline p99 ms", "<= 10", "<=10"),
    "order_timeline_p50_ms": ("order timeline p50 ms", "", ""),
    "customer_timeline_p99_ms": ("customer timeline p99 ms", "<= 10", "<=10"),
    "customer_timeline_p50_ms": ("customer timeline p50 ms", "", ""),
    "export_csv_rows_s": ("export CSV rows/s", ">= 150,000", ">=150000"),
    "rebuild_all_estimate_s": ("rebuilds one after another, s (this N)", "", ""),
    "rebuild_all_10m_estimate_s": ("... extrapolated to 10M events, s", "", ""),
    "rebuild_all_together_s": ("all rebuilds (rebuild --all), s (this N)", "", ""),
    "rebuild_all_together_10m_s": ("all rebuilds, extrapolated to 10M events, s", "< 600", "<600"),
    "bytes_per_event": ("bytes on disk per event (database)", "", ""),
    "log_bytes_per_event": ("bytes per event (stored_events + indexes)", "", ""),
    "rss_mib": ("server RSS MiB", "", ""),
}


def verdict(rule: str, base: float | None, value: float) -> str:
    if not rule:
        return ""
    if rule.startswith("ratio>="):
        if not base:
            return ""
        return "met" if value / base >= float(rule[7:]) else "MISSED"
    if rule.startswith(">="):
        return "met" if value >= float(rule[2:]) else "MISSED"
    if rule.startswith("<="):
        return "met" if value <= float(rule[2:]) else "MISSED"
    if rule.startswith("<"):
        return "met" if value < float(rule[1:]) else "MISSED"
    return ""


def summary(empty: Figures, base: Figures, at_n: Figures) -> None:
    print(f"\nsummary ({loads()} now)")
    print(
        f"| figure | empty (ingest: median of the paired rounds) / baseline ({base.events:,}) "
        f"| at {at_n.events:,} | ratio | target |"
    )
    print("|---|---|---|---|---|")
    names = list(TARGETS)
    at = names.index("rebuild_all_estimate_s")
    names[at:at] = [n for n in at_n.values if n.startswith("rebuild_") and n.endswith("_ev_s")]
    for name in names:
        label, target, rule = TARGETS.get(name, (f"rebuild {name[8:-5]} ev/s", "", ""))
        src = empty if name.startswith("ingest") or (name == "rss_mib") else base
        b = src.values.get(name)
        v = at_n.values.get(name)
        if v is None:
            continue
        bl = "-" if b is None else f"{b:,.1f} ({src.loads[name]:.1f})"
        vl = f"{v:,.1f} ({at_n.loads[name]:.1f})" + (
            f" {at_n.notes[name]}" if name in at_n.notes else ""
        )
        ratio = f"{v / b:.2f}x" if b and not name.startswith("rebuild_all") else "-"
        ok = verdict(rule, b, v)
        paired = at_n.values.get(f"{name}_paired_ratio")
        if paired is not None and b:  # judged by the median of the rounds' own ratios
            ratio = f"{paired:.2f}x (median of the rounds' ratios)"
            ok = verdict(rule, 1.0, paired)
        print(f"| {label} | {bl} | {vl} | {ratio} | {target} {ok} |")
    print("(load average, 1 min, in parentheses beside each figure)")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--baseline", type=int, default=200_000, help="events of the 'empty' log")
    ap.add_argument("--ingest-seconds", type=float, default=10, help="per ingest round")
    ap.add_argument(
        "--ingest-rounds", type=int, default=3, help="paired rounds (empty log, at N) of ingest"
    )
    ap.add_argument("--rebuild-seconds", type=float, default=120, help="bound per rebuild")
    ap.add_argument("--export-seconds", type=float, default=30, help="bound on the export")
    ap.add_argument(
        "--max-load-seconds",
        type=float,
        default=None,
        help="stop loading after this long and measure at the size reached",
    )
    ap.add_argument(
        "--quiet-seconds",
        type=float,
        default=150,
        help="how long the reads wait for the machine to be quiet (then measure anyway)",
    )
    ap.add_argument("--tmp", type=Path, default=None, help="where the database lives")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required (apt-get install wrk)")
    where = args.tmp or Path(tempfile.gettempdir())
    need = args.events * 3000 + 8 * 2**30  # ~2.4 KB per event with indexes, WAL while loading
    free = shutil.disk_usage(where).free
    if free < need:
        raise SystemExit(f"{where}: {free / 2**30:.0f} GiB free, need ~{need / 2**30:.0f} GiB")
    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-scale-", dir=where))
    # Sized as `ledger serve` sizes its embedded server, as docs/deploy.md tells an
    # operator to size a primary (ADR 0032).
    pg = embedded_server(tmp / "pgdata", cleanup="delete")
    try:
        server: str = pg.get_uri()
        print(f"ledger bench/scale.py: {args.events:,} events; {os.cpu_count()} cores, {loads()}")
        print(f"PostgreSQL data in {tmp / 'pgdata'}; {await memory(server)}", flush=True)
        empty = Figures("empty")
        url = await create_database(server, "scale_log")
        await prepare_database(url)
        baseline = min(args.baseline, args.events)
        took, baseline = await bulk_load(url, 0, baseline)
        print(f"bulk load: {baseline:,} events in {took:.1f} s ({baseline / took:,.0f} ev/s)")
        base = Figures("baseline")
        await measure(base, url, tmp, args)

        took, n = await bulk_load(url, baseline, args.events, max_seconds=args.max_load_seconds)
        print(f"bulk load: {n:,} more events in {took:.1f} s ({n / max(took, 1e-9):,.0f} ev/s)")
        if baseline + n < args.events:
            print(
                f"  (--max-load-seconds reached: measuring at {baseline + n:,}, not {args.events:,})"
            )
        at_n = Figures("at N")
        await measure(at_n, url, tmp, args)
        pg_pid = pg.get_pid()
        assert pg_pid is not None
        await paired_ingest(empty, at_n, server, url, tmp, args, pg_pid)
        await drop_database(server, url)
        summary(empty, base, at_n)
    finally:
        pg.cleanup()  # stops the server and deletes its data directory
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
