"""Customers: one normalisation (NFKC, casefold, trim), addresses only, no lookalikes."""

from __future__ import annotations

import json
import re

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.ingest.providers.mayar import DECODER, MayarData
from ledger.ingest.safetext import unsafe_char
from ledger.payments.customers import MAX_EMAIL, NotAnAddress, customer_key, normalize_email
from ledger.payments.facts import read_payment
from ledger.payments.rules import Catalogue, classify_payment, normalize_customer

CYRILLIC_A = "\u0430"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("Budi@Example.COM", "budi@example.com"),
        ("  a@b.c \n", "a@b.c"),
        ("\uff22\uff35\uff24\uff29\uff20example\uff0ecom", "budi@example.com"),  # fullwidth
        ("STRASSE@example.de", "strasse@example.de"),
        ("stra\u00dfe@example.de", "strasse@example.de"),  # casefold, not lower
        # One script throughout (an IDN address) is an address like any other.
        ("\u0430\u0434\u043c\u0438\u043d@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444",) * 2,
    ],
)
def test_normalisation_is_nfkc_then_casefold_then_trim(raw: str, key: str) -> None:
    assert normalize_email(raw) == key


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (f"budi@ex{CYRILLIC_A}mple.com", "mixes scripts"),
        (f"{CYRILLIC_A}dmin@example.com", "mixes scripts"),
        ("bu\u200bdi@example.com", "U+200B"),
        ("budi@example.com\u200d", "U+200D"),
        ("\u202ebudi@example.com", "U+202E"),
        ("budi\x00@example.com", "U+0000"),
        ("bu\x85di@example.com", "U+0085"),
        ("\ufeffbudi@example.com", "U+FEFF"),
        ("budi@localhost", "local@domain"),
        ("budi", "local@domain"),
        ("a b@example.com", "local@domain"),
        ("@example.com", "local@domain"),
        ("budi@@example.com", "local@domain"),
        ("x" * 65 + "@example.com", "local@domain"),
        ("a@" + "b" * MAX_EMAIL + ".com", "longer than"),
        ("budi\u2605@example.com", "outside ASCII"),  # a star survives NFKC
        ("   ", "empty"),
    ],
)
def test_unusable_and_lookalike_addresses_are_refused(raw: str, why: str) -> None:
    with pytest.raises(NotAnAddress, match=re.escape(why)):
        normalize_email(raw)
    assert customer_key(raw) is None


def test_compatibility_forms_fold_to_their_plain_letters() -> None:
    assert normalize_email("b\u00fcdi\u2122@example.com") == "b\u00fcditm@example.com"
    assert normalize_email("\ufb01@example.com") == "fi@example.com"  # the fi ligature


def test_absent_or_blank_is_no_customer() -> None:
    assert customer_key(None) is None
    assert customer_key("") is None
    assert customer_key("  ") is None


emails = st.from_regex(
    r"[A-Za-z0-9._%+-]{1,20}@[A-Za-z0-9-]{1,15}(\.[A-Za-z]{2,6}){1,2}", fullmatch=True
)


@given(emails)
def test_ascii_addresses_keep_the_old_rule(raw: str) -> None:
    """Events folded before the change used strip().lower(): for ASCII addresses (all the
    log held in practice) the new rule gives the same key, so balances do not move."""
    assert normalize_email(f" {raw} ") == raw.strip().lower()


@given(emails)
def test_normalisation_is_idempotent(raw: str) -> None:
    once = normalize_email(raw)
    assert normalize_email(once) == once


@given(st.text(max_size=40))
def test_any_text_is_a_key_or_refused_never_an_unsafe_key(raw: str) -> None:
    key = customer_key(raw)
    if key is not None:
        assert unsafe_char(key) is None
        assert key == normalize_email(key)
        assert len(key) <= MAX_EMAIL


def mayar_data(**fields: object) -> MayarData:
    body = msgspec.json.encode({"event": "payment.success", "data": fields})
    return DECODER.decode(body).data


def fact_customer(raw: str) -> str | None:
    """The customer ``ledger.payments.facts`` reads (the feed, the index, the outbox, orders)."""
    body = msgspec.json.encode({"event": "payment.success", "data": {"customerEmail": raw}})
    payment = read_payment("mayar", body)
    assert payment is not None
    return payment.customer


def test_every_path_uses_the_one_rule() -> None:
    """MayarData.email, the folds and the payment facts agree (they were three copies)."""
    raw = "  \uff22udi@Example.com "
    assert mayar_data(customerEmail=raw).email == "budi@example.com"
    assert normalize_customer(raw) == "budi@example.com"
    assert fact_customer(raw) == "budi@example.com"
    lookalike = f"budi@ex{CYRILLIC_A}mple.com"
    assert mayar_data(customerEmail=lookalike).email is None
    assert normalize_customer(lookalike) is None
    assert fact_customer(lookalike) is None


def test_a_lookalike_in_an_old_event_credits_nobody() -> None:
    """An event recorded before ingest refused lookalikes folds to review, not to a
    customer (the read models bumped their version for this)."""
    data = mayar_data(id="1", customerEmail=f"budi@ex{CYRILLIC_A}mple.com", package="silver")
    credit = classify_payment(data, Catalogue(), "e")
    assert credit.customer is None
    assert credit.tokens == 0
    assert [f.reason for f in credit.flags] == ["unknown-customer"]


def test_stored_events_with_old_normalisation_fold_deterministically() -> None:
    raw = json.dumps({"customerEmail": "Ana@Example.com", "package": "gold", "id": 9})
    a = classify_payment(mayar_data(**json.loads(raw)), Catalogue(), "e")
    b = classify_payment(mayar_data(**json.loads(raw)), Catalogue(), "e")
    assert a == b
    assert a.customer == "ana@example.com"
