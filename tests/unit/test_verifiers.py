"""Verifiers under hostile input: only ever Accepted, Unauthorized or Unusable.

Every provider's ``accept(headers, body)`` is fed random header dicts, random bytes, random
JSON, correctly signed deliveries with a flipped byte, truncated deliveries and deep
nesting. Anything other than the three outcomes would become a 500 at the edge, so it fails
the test. Correctly signed deliveries from ``ledger.ingest.samples.build`` must be accepted with the
dedup key documented in ``shared/reference/providers.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.ingest.providers import Accepted, Provider, Unauthorized, Unusable, build_providers
from ledger.ingest.providers.base import check_depth, check_single, hmac_sha256_hex, secret_list
from ledger.ingest.providers.mayar import EVENTS as MAYAR_EVENTS
from ledger.ingest.providers.mayar import Mayar
from ledger.ingest.providers.midtrans import Midtrans, StatusCode, signature
from ledger.ingest.providers.partner import Partner
from ledger.ingest.providers.xendit import Xendit
from ledger.ingest.samples import MIDTRANS_STATUS_CODES, build
from tests import support
from tests.support import SECRETS

SETTINGS = support.test_settings()
DEPTH = SETTINGS.max_json_depth
MAYAR_TOKEN = SECRETS["LEDGER_MAYAR_TOKEN"]
MIDTRANS_KEY = SECRETS["LEDGER_MIDTRANS_SERVER_KEY"]
XENDIT_TOKEN = SECRETS["LEDGER_XENDIT_TOKEN"]
PARTNER_SECRET = SECRETS["LEDGER_PARTNER_SECRET"]

PROVIDERS: dict[str, Provider] = {
    "mayar": Mayar(MAYAR_TOKEN, max_depth=DEPTH),
    "midtrans": Midtrans(MIDTRANS_KEY, max_depth=DEPTH),
    "xendit": Xendit(XENDIT_TOKEN, max_depth=DEPTH),
    "partner": Partner(PARTNER_SECRET, max_depth=DEPTH),
}
# One valid event per provider, for signed deliveries built by ``ledger trigger``.
EVENTS = {
    "mayar": sorted(MAYAR_EVENTS),
    "midtrans": sorted(MIDTRANS_STATUS_CODES),
    "xendit": ["PENDING", "PAID", "SETTLED", "EXPIRED"],
    "partner": ["booking.paid", "booking.updated"],
}
# The headers a correctly authenticated delivery carries (Midtrans signs inside the body).
AUTH_HEADERS: dict[str, dict[str, str]] = {
    "mayar": {"x-callback-token": MAYAR_TOKEN},
    "midtrans": {},
    "xendit": {"x-callback-token": XENDIT_TOKEN},
    "partner": {},  # the signature depends on the body; see ``partner_headers``
}

BOUNDED = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
provider_names = st.sampled_from(sorted(PROVIDERS))

# What an ASGI server hands us: header names lowercased, values decoded as latin-1.
header_values = st.one_of(
    st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
    st.text(st.characters(codec="latin-1"), max_size=80),
    st.sampled_from([MAYAR_TOKEN, XENDIT_TOKEN, PARTNER_SECRET, MIDTRANS_KEY, "", " "]),
)
header_names = st.one_of(
    st.sampled_from(
        [
            "x-callback-token",
            "x-pwa-signature",
            "webhook-id",
            "idempotency-key",
            "x-idempotency-key",
            "content-type",
        ]
    ),
    st.text(st.characters(codec="ascii", categories=["Ll", "Nd", "Pd"]), min_size=1, max_size=20),
)
header_dicts = st.dictionaries(header_names, header_values, max_size=6)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
# Objects shaped like the real payloads (right field names, arbitrary values).
FIELDS = [
    "event",
    "data",
    "id",
    "customerEmail",
    "customer",
    "package",
    "order_id",
    "status_code",
    "gross_amount",
    "signature_key",
    "transaction_status",
    "transaction_id",
    "fraud_status",
    "external_id",
    "user_id",
    "status",
    "merchant_name",
    "amount",
    "created",
    "updated",
    "currency",
    "paid_amount",
    "booking_id",
    "timestamp",
    "payment_details",
]
shaped = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=12)
random_bodies = st.one_of(
    st.binary(max_size=600),
    json_values.map(lambda v: json.dumps(v).encode()),
    shaped.map(lambda v: json.dumps(v).encode()),
    shaped.map(lambda v: json.dumps({"event": "payment.success", "data": v}).encode()),
)


def partner_headers(body: bytes) -> dict[str, str]:
    return {"x-pwa-signature": hmac_sha256_hex(PARTNER_SECRET, body)}


def authenticated_headers(provider: str, body: bytes) -> dict[str, str]:
    return partner_headers(body) if provider == "partner" else dict(AUTH_HEADERS[provider])


def outcome(provider: Provider, headers: Mapping[str, str], body: bytes) -> object:
    """The verifier's answer; any exception other than the two refusals propagates."""
    try:
        result = provider.accept(headers, body)
    except (Unauthorized, Unusable) as exc:
        refusal: Exception = exc
    else:
        refusal = None
    if refusal is not None:
        assert str(refusal), "a refusal must name its fault"
        return refusal
    assert isinstance(result, Accepted)
    assert isinstance(result.dedup_key, str)
    assert result.dedup_key.startswith(f"{provider.name}:")
    assert isinstance(result.kind, str)
    return result


def signed_delivery(provider: str, event: str, **kw: str) -> tuple[dict[str, str], bytes]:
    d = build(SETTINGS, provider, event, **kw)
    return dict(d.headers), d.body


# -- random input only ever yields the three outcomes ------------------------------------


@BOUNDED
@given(provider_names, header_dicts, random_bodies)
def test_random_headers_and_bodies(name: str, headers: dict[str, str], body: bytes) -> None:
    outcome(PROVIDERS[name], headers, body)


@BOUNDED
@given(provider_names, random_bodies)
def test_random_bodies_with_valid_credentials(name: str, body: bytes) -> None:
    got = outcome(PROVIDERS[name], authenticated_headers(name, body), body)
    if name != "midtrans":
        # Authenticated senders are never refused: their bad payloads are quarantined.
        assert not isinstance(got, Unauthorized)


MIDTRANS_CODES = get_args(StatusCode)
order_ids = st.from_regex(r"[A-Za-z0-9_~.\-]{1,50}", fullmatch=True)
gross_amounts = st.from_regex(r"(0|[1-9][0-9]{0,12})\.[0-9]{2}", fullmatch=True)


@BOUNDED
@given(
    st.one_of(st.text(max_size=40), order_ids),
    st.one_of(st.text(max_size=5), st.sampled_from(MIDTRANS_CODES)),
    st.one_of(st.text(max_size=20), gross_amounts),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8),
)
def test_midtrans_signed_random_fields(
    order_id: str, status_code: str, gross: str, extra: dict[str, Any]
) -> None:
    """Correctly signed but otherwise arbitrary: past authentication, decoding must cope."""
    body = {
        **extra,
        "order_id": order_id,
        "status_code": status_code,
        "gross_amount": gross,
        "signature_key": signature(order_id, status_code, gross, MIDTRANS_KEY),
    }
    got = outcome(PROVIDERS["midtrans"], {}, json.dumps(body).encode())
    # Authenticated only when every signed field has its documented shape: otherwise the
    # signature could be a re-split of another notification's.
    shaped_ok = (
        re.fullmatch(r"[A-Za-z0-9_~.\-]{1,50}", order_id)
        and status_code in MIDTRANS_CODES
        and re.fullmatch(r"(0|[1-9][0-9]{0,12})\.[0-9]{2}", gross)
    )
    assert isinstance(got, Unauthorized) != bool(shaped_ok), got


@BOUNDED
@given(provider_names, st.data())
def test_signed_body_with_a_flipped_byte(name: str, data: st.DataObject) -> None:
    headers, body = signed_delivery(name, data.draw(st.sampled_from(EVENTS[name])))
    i = data.draw(st.integers(0, len(body) - 1))
    flipped = bytearray(body)
    flipped[i] ^= data.draw(st.integers(1, 255))
    got = outcome(PROVIDERS[name], headers, bytes(flipped))
    if name == "partner":
        assert isinstance(got, Unauthorized)


@BOUNDED
@given(provider_names, st.data())
def test_truncated_signed_body(name: str, data: st.DataObject) -> None:
    headers, body = signed_delivery(name, data.draw(st.sampled_from(EVENTS[name])))
    cut = body[: data.draw(st.integers(0, len(body) - 1))]
    got = outcome(PROVIDERS[name], headers, cut)
    assert not isinstance(got, Accepted), "a truncated JSON object is never usable"
    if name == "partner":
        assert isinstance(got, Unauthorized)


@BOUNDED
@given(provider_names, st.integers(0, 3000), st.sampled_from([b"[", b"{", b'{"a":', b'[{"a":']))
def test_deep_nesting(name: str, depth: int, opener: bytes) -> None:
    closer = {b"[": b"]", b"{": b"}", b'{"a":': b"}", b'[{"a":': b"}]"}[opener]
    core = opener * depth + b"1" + closer * depth
    levels = depth * (2 if opener == b'[{"a":' else 1)
    got = outcome(PROVIDERS[name], authenticated_headers(name, core), core)
    if levels > DEPTH:
        if name == "midtrans":  # too deep to authenticate: refused, not recorded
            assert isinstance(got, Unauthorized)
            assert "nesting" in str(got)
        else:
            assert isinstance(got, Unusable)
            assert got.kind == "too-deep"
    else:
        assert not (isinstance(got, Unusable) and got.kind == "too-deep")


# -- correctly signed deliveries are accepted with the documented dedup key ---------------


def documented_key(provider: str, headers: Mapping[str, str], body: bytes) -> str:
    """The dedup key as ``shared/reference/providers.md`` defines it, from the raw body."""
    doc = json.loads(body)
    if provider == "mayar":
        return f"mayar:{doc['data']['id']}:{doc['event']}"
    if provider == "midtrans":
        key = ":".join(
            [
                "midtrans",
                doc["order_id"],
                doc["transaction_id"],
                doc["transaction_status"],
                doc["status_code"],
            ]
        )
        return f"{key}:{doc['fraud_status']}" if doc.get("fraud_status") else key
    if provider == "xendit":
        if "webhook-id" in headers:
            return f"xendit:webhook-id:{headers['webhook-id']}"
        return f"xendit:{doc['id']}:{doc['status']}"
    return f"partner:{doc['booking_id']}:{doc['event']}:{doc['status']}:{doc['timestamp']}"


# Ids as ingest accepts them: no control, zero-width or bidi characters (categories Cc, Cf).
safe_ids = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Cf"]), min_size=1, max_size=30
)
amounts = st.decimals(min_value=1, max_value=10**12, places=2).map(str)


@BOUNDED
@given(provider_names, st.data())
def test_signed_valid_delivery_is_accepted_with_documented_key(
    name: str, data: st.DataObject
) -> None:
    event = data.draw(st.sampled_from(EVENTS[name]))
    kw: dict[str, str] = {"order_id": data.draw(order_ids if name == "midtrans" else safe_ids)}
    if name == "midtrans":
        kw["amount"] = data.draw(amounts)
        if data.draw(st.booleans()):
            kw["fraud_status"] = data.draw(st.sampled_from(["accept", "challenge", "deny"]))
    headers, body = signed_delivery(name, event, **kw)
    if name == "xendit" and data.draw(st.booleans()):
        headers["webhook-id"] = data.draw(safe_ids)
    got = outcome(PROVIDERS[name], headers, body)
    assert isinstance(got, Accepted), got
    assert got.dedup_key == documented_key(name, headers, body)
    assert got.kind == event


def test_mayar_without_data_id_keys_on_the_body_digest() -> None:
    body = json.dumps({"event": "testing", "data": {"customerEmail": "a@b.c"}}).encode()
    got = PROVIDERS["mayar"].accept({"x-callback-token": MAYAR_TOKEN}, body)
    assert got.dedup_key == f"mayar:{hashlib.sha256(body).hexdigest()}"


def test_partner_idempotency_header_wins() -> None:
    headers, body = signed_delivery("partner", "booking.paid")
    got = PROVIDERS["partner"].accept({**headers, "idempotency-key": "abc-1"}, body)
    assert got.dedup_key == "partner:idempotency:abc-1"


# -- tampering ------------------------------------------------------------------------


@BOUNDED
@given(amounts, amounts)
def test_midtrans_tampered_gross_amount_is_unauthorized(real: str, forged: str) -> None:
    _, body = signed_delivery("midtrans", "settlement", amount=real)
    doc = json.loads(body)
    doc["gross_amount"] = forged if forged != real else f"{Decimal(real) + 1:.2f}"
    with pytest.raises(Unauthorized, match="signature_key"):
        PROVIDERS["midtrans"].accept({}, json.dumps(doc).encode())


@pytest.mark.parametrize("field", ["order_id", "status_code"])
def test_midtrans_tampered_signed_field_is_unauthorized(field: str) -> None:
    _, body = signed_delivery("midtrans", "settlement")
    doc = json.loads(body)
    doc[field] = doc[field] + "1"
    with pytest.raises(Unauthorized):
        PROVIDERS["midtrans"].accept({}, json.dumps(doc).encode())


def test_partner_every_single_flipped_byte_is_unauthorized() -> None:
    headers, body = signed_delivery("partner", "booking.paid")
    assert isinstance(PROVIDERS["partner"].accept(headers, body), Accepted)
    for i in range(len(body)):
        flipped = bytearray(body)
        flipped[i] ^= 0x01
        with pytest.raises(Unauthorized):
            PROVIDERS["partner"].accept(headers, bytes(flipped))


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_no_secret_configured_accepts_nothing(name: str) -> None:
    bare: Provider = type(PROVIDERS[name])(None)  # type: ignore[call-arg]
    headers, body = signed_delivery(name, EVENTS[name][0])
    with pytest.raises(Unauthorized, match="configured"):
        bare.accept({**headers, "x-callback-token": ""}, body)


# -- check_depth ------------------------------------------------------------------------


@pytest.mark.parametrize("opener", ["[", "{"])
def test_check_depth_exactly_max_is_ok_and_one_more_is_rejected(opener: str) -> None:
    close = "]" if opener == "[" else "}"
    inner = "1" if opener == "[" else ""

    def nested(n: int) -> bytes:
        if opener == "[":
            return (opener * n + inner + close * n).encode()
        return ('{"a":' * (n - 1) + "{}" + "}" * (n - 1)).encode()

    check_depth(nested(DEPTH), DEPTH)
    with pytest.raises(Unusable, match=f"deeper than {DEPTH}") as info:
        check_depth(nested(DEPTH + 1), DEPTH)
    assert info.value.kind == "too-deep"


def test_check_depth_ignores_brackets_inside_strings() -> None:
    brackets = "[{" * 200
    body = json.dumps({"note": brackets, "esc": 'quote " then [[[[', "list": [[["x"]]]}).encode()
    assert body.count(b"[") + body.count(b"{") > DEPTH  # the slow path is exercised
    check_depth(body, DEPTH)
    # ...but the same brackets outside a string do count.
    with pytest.raises(Unusable):
        check_depth(brackets.encode(), DEPTH)


def test_check_depth_escaped_quote_does_not_end_the_string() -> None:
    body = b'["\\"' + b"[" * 100 + b'"]'
    check_depth(body, DEPTH)
    with pytest.raises(Unusable):
        check_depth(b'["\\\\"' + b"[" * 100 + b'"]', DEPTH)  # escaped backslash: string ends


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 40 + b'"' + b'\\"' * 32_000,  # one unterminated string of escaped quotes
        b"[" * 40 + b'"\\' * 32_000,
        b'{"a":"' + b'\\"[' * 21_000,
    ],
)
def test_check_depth_is_linear_on_adversarial_bodies(body: bytes) -> None:
    """Midtrans runs check_depth before authentication: it must stay cheap for anyone."""
    assert len(body) <= 64 * 1024
    # No wall-clock bound here (it flakes on a loaded machine): the scan is one pass of a
    # regex without nested quantifiers; these bodies must be judged, not crash.
    with contextlib.suppress(Unusable):
        check_depth(body, DEPTH)


# -- Midtrans: a signature vouches only for fields in their documented shapes --------------


def midtrans_doc(**fields: str) -> dict[str, Any]:
    _, body = signed_delivery("midtrans", "settlement", **fields)
    doc: dict[str, Any] = json.loads(body)
    return doc


def test_midtrans_resplit_signature_is_unauthorized() -> None:
    """``"CAT-1"+"200"+"50000.00"`` == ``"CAT-12"+"00"+"50000.00"``: same signature."""
    doc = midtrans_doc(order_id="CAT-1", amount="50000.00")
    assert doc["status_code"] == "200"
    assert isinstance(PROVIDERS["midtrans"].accept({}, json.dumps(doc).encode()), Accepted)
    doc |= {"order_id": "CAT-12", "status_code": "00"}
    with pytest.raises(Unauthorized, match="status_code"):
        PROVIDERS["midtrans"].accept({}, json.dumps(doc).encode())


# The codes a notification carries (200 paid/refunded, 201 pending, 202 denied, 407 expired).
NOTIFICATION_CODES = ["200", "201", "202", "407"]


@BOUNDED
@given(
    order_ids, st.sampled_from(NOTIFICATION_CODES), gross_amounts, st.sampled_from([-2, -1, 1, 2])
)
def test_midtrans_moving_the_split_by_one_or_two_characters_is_refused(
    order_id: str, code: str, gross: str, shift: int
) -> None:
    joined = order_id + code + gross
    cut = len(order_id) + shift
    if not 0 < cut < len(joined) - 3:
        return
    doc = {
        "order_id": joined[:cut],
        "status_code": joined[cut : cut + 3],
        "gross_amount": joined[cut + 3 :],
        "signature_key": signature(order_id, code, gross, MIDTRANS_KEY),
        "transaction_status": "settlement",
        "transaction_id": "t-1",
    }
    assert (
        signature(doc["order_id"], doc["status_code"], doc["gross_amount"], MIDTRANS_KEY)
        == (doc["signature_key"])
    )
    with pytest.raises(Unauthorized, match="signature cannot be verified"):
        PROVIDERS["midtrans"].accept({}, json.dumps(doc).encode())


def signed_midtrans(order_id: str, code: str, gross: str) -> bytes:
    doc = {
        "order_id": order_id,
        "status_code": code,
        "gross_amount": gross,
        "signature_key": signature(order_id, code, gross, MIDTRANS_KEY),
        "transaction_status": "settlement",
        "transaction_id": "t-1",
    }
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "gross",
    [
        "NaN",
        "-299000.00",
        "1e309",
        "",
        "Infinity",
        "299000",
        "299000.0",
        "299000.000",
        "0299000.00",
        "00.00",
        "299,000.00",
        " 299000.00",
        "299000.00\n",
        "10000000000000.00",  # 10^13: above the bound
        "\uff12.00",  # a fullwidth digit
    ],
)
def test_midtrans_gross_amount_out_of_shape_is_unauthorized_even_when_signed(gross: str) -> None:
    with pytest.raises(Unauthorized, match="gross_amount"):
        PROVIDERS["midtrans"].accept({}, signed_midtrans("INV-1", "200", gross))


@pytest.mark.parametrize(
    "order_id", ["", "x" * 51, "CAT 1", "CAT/1", "CAT\u200b1", "CAT\x001", "CAT-1\n", "\u0421AT-1"]
)
def test_midtrans_order_id_out_of_shape_is_unauthorized_even_when_signed(order_id: str) -> None:
    with pytest.raises(Unauthorized, match="order_id"):
        PROVIDERS["midtrans"].accept({}, signed_midtrans(order_id, "200", "1.00"))


@pytest.mark.parametrize("code", ["00", "2000", "299", "600", " 200", "20O", ""])
def test_midtrans_undocumented_status_code_is_unauthorized_even_when_signed(code: str) -> None:
    with pytest.raises(Unauthorized, match="status_code"):
        PROVIDERS["midtrans"].accept({}, signed_midtrans("INV-1", code, "1.00"))


def test_midtrans_documented_edges_are_accepted() -> None:
    for order_id, code, gross in [
        ("a" * 50, "407", "0.00"),
        ("A-b_c~d.e", "505", "9999999999999.99"),
    ]:
        got = PROVIDERS["midtrans"].accept({}, signed_midtrans(order_id, code, gross))
        assert isinstance(got, Accepted)


# -- unsafe text in an authenticated field: quarantined, never interpreted ----------------

UNSAFE = [
    "\x00",
    "\x07",
    "\x1b",
    "\x7f",
    "\x85",
    "\u200b",
    "\u200f",
    "\u202e",
    "\u2060",
    "\u2066",
    "\ufeff",
    "\n",
]
# (provider, event, path to a string field we interpret)
FIELD_PATHS = [
    ("mayar", "payment.success", ("data", "id")),
    ("mayar", "payment.success", ("data", "customerEmail")),
    ("mayar", "payment.success", ("data", "package")),
    ("mayar", "subscription.activated", ("data", "licenseCode")),
    ("mayar", "subscription.activated", ("data", "expiredAt")),
    ("midtrans", "settlement", ("transaction_id",)),
    ("midtrans", "settlement", ("customer_email",)),
    ("midtrans", "settlement", ("payment_type",)),
    ("xendit", "PAID", ("external_id",)),
    ("xendit", "PAID", ("id",)),
    ("xendit", "PAID", ("payer_email",)),
    ("xendit", "PAID", ("currency",)),
    ("partner", "booking.paid", ("booking_id",)),
    ("partner", "booking.paid", ("timestamp",)),
    ("partner", "booking.paid", ("payment_method",)),
]


def with_field(provider: str, event: str, path: tuple[str, ...], value: object) -> bytes:
    _, body = signed_delivery(provider, event, customer="budi@example.com", package="silver")
    doc = json.loads(body)
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize("char", UNSAFE, ids=[f"U+{ord(c):04X}" for c in UNSAFE])
@pytest.mark.parametrize(("provider", "event", "path"), FIELD_PATHS)
def test_unsafe_character_in_a_field_makes_the_delivery_unusable(
    provider: str, event: str, path: tuple[str, ...], char: str
) -> None:
    value = f"budi{char}@example.com" if "mail" in path[-1].lower() else f"x{char}1"
    body = with_field(provider, event, path, value)
    got = outcome(PROVIDERS[provider], authenticated_headers(provider, body), body)
    assert isinstance(got, Unusable), got
    assert path[-1] in str(got)  # the problem names the field
    assert char not in str(got)  # the fault itself is safe text
    assert char not in got.kind


@pytest.mark.parametrize(("provider", "event", "path"), FIELD_PATHS)
def test_over_long_field_makes_the_delivery_unusable(
    provider: str, event: str, path: tuple[str, ...]
) -> None:
    value = "x" * 330 + "@example.com" if "mail" in path[-1].lower() else "x" * 257
    body = with_field(provider, event, path, value)
    got = outcome(PROVIDERS[provider], authenticated_headers(provider, body), body)
    assert isinstance(got, Unusable), got
    assert path[-1] in str(got)


def test_free_text_may_hold_newlines_and_joiners_but_not_nul() -> None:
    ok = with_field("xendit", "PAID", ("description",), "line one\nline two \u200d\U0001f600")
    assert isinstance(PROVIDERS["xendit"].accept(AUTH_HEADERS["xendit"], ok), Accepted)
    bad = with_field("xendit", "PAID", ("description",), "line one\x00")
    with pytest.raises(Unusable, match="description"):
        PROVIDERS["xendit"].accept(AUTH_HEADERS["xendit"], bad)


@pytest.mark.parametrize("provider", ["mayar", "midtrans", "xendit"])
def test_lookalike_email_makes_the_delivery_unusable(provider: str) -> None:
    field = {"mayar": ("data", "customerEmail"), "midtrans": ("customer_email",)}.get(
        provider, ("payer_email",)
    )
    event = EVENTS[provider][0] if provider != "mayar" else "payment.success"
    body = with_field(provider, event, field, "budi@ex\u0430mple.com")  # Cyrillic a
    with pytest.raises(Unusable, match="mixes scripts"):
        PROVIDERS[provider].accept(authenticated_headers(provider, body), body)


@pytest.mark.parametrize("name", ["webhook-id", "idempotency-key"])
def test_unsafe_dedup_header_makes_the_delivery_unusable(name: str) -> None:
    provider = "xendit" if name == "webhook-id" else "partner"
    headers, body = signed_delivery(provider, EVENTS[provider][0])
    for value in ("a\u202eb", "x" * 257):
        with pytest.raises(Unusable, match=name):
            PROVIDERS[provider].accept({**headers, name: value}, body)


# -- amounts: finite, non-negative, bounded ------------------------------------------------

AMOUNT_PATHS = [
    ("mayar", "payment.success", ("data", "amount")),
    ("xendit", "PAID", ("amount",)),
    ("xendit", "PAID", ("paid_amount",)),
    ("partner", "booking.paid", ("paid_amount",)),
]
BAD_AMOUNTS = [
    "-1",
    '"-0.01"',
    '"NaN"',
    '"Infinity"',
    '"-Infinity"',
    "1e309",
    '"1e309"',
    "10000000000001",
    '"abc"',
    "0.001",
    '""',
]


def amount_outcome(provider: str, event: str, path: tuple[str, ...], token: str) -> object:
    """What the provider makes of an authenticated body whose amount at ``path`` is the raw
    JSON ``token``."""
    body = with_field(provider, event, path, "__AMOUNT__").replace(b'"__AMOUNT__"', token.encode())
    return outcome(PROVIDERS[provider], authenticated_headers(provider, body), body)


@pytest.mark.parametrize("token", BAD_AMOUNTS)
@pytest.mark.parametrize(("provider", "event", "path"), AMOUNT_PATHS)
def test_bad_amount_makes_the_delivery_unusable(
    provider: str, event: str, path: tuple[str, ...], token: str
) -> None:
    got = amount_outcome(provider, event, path, token)
    assert isinstance(got, Unusable), got
    assert path[-1] in str(got)


@pytest.mark.parametrize("token", ["0", "10000000000000", '"299000.00"', "299000.5"])
@pytest.mark.parametrize(("provider", "event", "path"), AMOUNT_PATHS)
def test_amounts_within_bounds_are_accepted(
    provider: str, event: str, path: tuple[str, ...], token: str
) -> None:
    got = amount_outcome(provider, event, path, token)
    assert isinstance(got, Accepted), got


# -- credentials: repeated headers refused, rotated secrets accepted ---------------------------


@pytest.mark.parametrize("name", ["x-callback-token", "x-pwa-signature", "X-Signature"])
def test_repeated_credential_header_is_unauthorized(name: str) -> None:
    with pytest.raises(Unauthorized, match="more than once"):
        check_single({"accept", name})
    check_single({"accept", "x-forwarded-for"})  # others may repeat


def test_rotated_secrets_accept_each_listed_secret_and_refuse_others() -> None:
    rotated = support.test_settings(
        LEDGER_MAYAR_TOKEN="mayar-new, mayar-old",
        LEDGER_MIDTRANS_SERVER_KEY="SB-new,SB-old",
        LEDGER_XENDIT_TOKEN="xendit-new,xendit-old",
        LEDGER_PARTNER_SECRET="partner-new,partner-old",
    )
    providers = build_providers(rotated)
    for provider, event in [
        ("mayar", "payment.success"),
        ("midtrans", "settlement"),
        ("xendit", "PAID"),
        ("partner", "booking.paid"),
    ]:
        for secret, ok in [("new", True), ("old", True), ("third", False)]:
            one = support.test_settings(
                LEDGER_MAYAR_TOKEN=f"mayar-{secret}",
                LEDGER_MIDTRANS_SERVER_KEY=f"SB-{secret}",
                LEDGER_XENDIT_TOKEN=f"xendit-{secret}",
                LEDGER_PARTNER_SECRET=f"partner-{secret}",
            )
            d = build(one, provider, event)
            got = outcome(providers[provider], d.headers, d.body)
            assert isinstance(got, Accepted if ok else Unauthorized), (provider, secret, got)
        # ``ledger trigger`` signs with the first (newest) secret.
        d = build(rotated, provider, event)
        assert isinstance(providers[provider].accept(d.headers, d.body), Accepted)
        assert "old" not in repr(providers[provider])
        assert "new" not in repr(providers[provider])


def test_secret_lists_ignore_blanks() -> None:
    assert secret_list(" a , ,b,") == ("a", "b")
    assert secret_list(",") == ()
    assert secret_list(None) == ()
    with pytest.raises(Unauthorized, match="configured"):
        Mayar(" , ").accept({"x-callback-token": ""}, b"{}")


@pytest.mark.parametrize("provider", ["mayar", "xendit", "partner"])
def test_lone_surrogate_escape_makes_the_delivery_unusable(provider: str) -> None:
    path = {"mayar": ("data", "id"), "xendit": ("external_id",), "partner": ("booking_id",)}
    event = {"mayar": "payment.success", "xendit": "PAID", "partner": "booking.paid"}[provider]
    body = with_field(provider, event, path[provider], "__LONE__").replace(b"__LONE__", b"\\ud800")
    got = outcome(PROVIDERS[provider], authenticated_headers(provider, body), body)
    assert isinstance(got, Unusable), got
