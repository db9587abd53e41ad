"""Pure folding rules: token credits (catalogue, customer, prices) and subscription facts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.ingest.providers.mayar import DECODER, MayarData
from ledger.payments.rules import (
    FOREVER,
    Catalogue,
    classify_payment,
    fact_kind,
    parse_expiry,
    subscription_fact,
    subscription_status,
)


def data(**fields: object) -> MayarData:
    return DECODER.decode(msgspec.json.encode({"event": "payment.success", "data": fields})).data


def test_default_catalogue_credits_silver_and_gold_case_insensitively():
    cat = Catalogue()
    silver = classify_payment(data(id="1", customerEmail="A@B.c ", package="Silver"), cat, "e")
    assert (silver.customer, silver.package, silver.tokens, silver.flags) == (
        "a@b.c",
        "silver",
        5,
        (),
    )
    gold = classify_payment(data(customer={"email": "x@y.z"}, membershipTierName="GOLD"), cat, "e")
    assert (gold.customer, gold.tokens) == ("x@y.z", 100)


def test_payment_key_is_the_mayar_id_else_the_event():
    cat = Catalogue()
    assert (
        classify_payment(data(id=7, customerEmail="a@b.c", package="gold"), cat, "e").payment_key
        == "mayar:7"
    )
    assert (
        classify_payment(data(customerEmail="a@b.c", package="gold"), cat, "ev").payment_key
        == "event:ev"
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"customerEmail": "a@b.c", "package": "platinum"}, "unknown-package"),
        ({"customerEmail": "a@b.c"}, "unknown-package"),
        ({"customerEmail": "a@b.c", "package": "  "}, "unknown-package"),
        ({"package": "silver"}, "unknown-customer"),
        ({"customerEmail": "   ", "package": "silver"}, "unknown-customer"),
    ],
)
def test_nothing_is_guessed(fields, reason):
    credit = classify_payment(data(**fields), Catalogue(), "e")
    assert credit.tokens == 0
    assert reason in [f.reason for f in credit.flags]


def test_prices_flag_a_differing_or_missing_amount():
    cat = Catalogue.of({"silver": 5}, {"Silver": 50000})
    ok = classify_payment(data(customerEmail="a@b.c", package="silver", amount=50000), cat, "e")
    assert ok.tokens == 5
    assert ok.flags == ()
    exact = classify_payment(
        data(customerEmail="a@b.c", package="silver", amount="50000.00"), cat, "e"
    )
    assert exact.tokens == 5
    low = classify_payment(data(customerEmail="a@b.c", package="silver", amount=49999), cat, "e")
    assert low.tokens == 0
    assert [f.reason for f in low.flags] == ["amount-mismatch"]
    assert "49999" in low.flags[0].detail
    missing = classify_payment(data(customerEmail="a@b.c", package="silver"), cat, "e")
    assert [f.reason for f in missing.flags] == ["amount-mismatch"]


def test_catalogue_from_environment():
    cat = Catalogue.from_env(
        {"LEDGER_TOKEN_PACKAGES": "Bronze=1, silver=7", "LEDGER_PACKAGE_PRICES": "silver=70000"}
    )
    assert dict(cat.tokens) == {"bronze": 1, "silver": 7}
    assert dict(cat.prices or {}) == {"silver": 70000}
    default = Catalogue.from_env({})
    assert dict(default.tokens) == {"silver": 5, "gold": 100}
    assert default.prices is None


def test_amounts_are_decimals_never_floats():
    d = data(amount=0.1)
    assert isinstance(d.amount, Decimal)


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ("subscription.activated", "grant"),
        ("subscription.renewed", "grant"),
        ("membership.activated", "grant"),
        ("membership.newMemberRegistered", "grant"),
        ("subscription.cancelled", "cancel"),
        ("membership.memberUnsubscribed", "cancel"),
        ("subscription.expired", "expire"),
        ("membership.memberExpired", "expire"),
        ("subscription.expiring_soon", None),
        ("subscription.created", None),
    ],
)
def test_fact_kinds(event, kind):
    assert fact_kind(event) == kind


def test_expiry_parsing():
    assert parse_expiry("2027-01-01T00:00:00.000Z") == datetime(2027, 1, 1, tzinfo=UTC)
    assert parse_expiry("2027-01-01T07:00:00+07:00") == datetime(2027, 1, 1, tzinfo=UTC)
    assert parse_expiry("2027-01-01") == datetime(2027, 1, 1, tzinfo=UTC)
    assert parse_expiry(None) is None
    with pytest.raises(ValueError, match="Invalid isoformat"):
        parse_expiry("next tuesday")


def test_unreadable_expiry_grants_nothing_and_is_flagged():
    fact = subscription_fact(
        "subscription.activated", data(customerEmail="a@b.c", licenseCode="L", expiredAt="soon")
    )
    assert fact.kind is None
    assert [f.reason for f in fact.flags] == ["invalid-expiry"]


NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def test_status_rules():
    assert subscription_status(NOW + DAY, None, None, NOW) == "active"
    assert subscription_status(NOW - DAY, None, None, NOW) == "expired"  # no event needed
    assert subscription_status(NOW + DAY, NOW + DAY, None, NOW) == "cancelled"
    assert subscription_status(NOW + 30 * DAY, NOW + DAY, None, NOW) == "active"  # renewed
    assert subscription_status(NOW + DAY, None, FOREVER, NOW) == "expired"
    assert subscription_status(FOREVER, None, None, NOW) == "active"  # no end
    assert subscription_status(None, NOW, None, NOW) == "cancelled"
    assert subscription_status(None, None, None, NOW) == "pending"


fact = st.tuples(
    st.sampled_from(["grant", "cancel", "expire"]),
    st.one_of(st.none(), st.integers(-5, 5).map(lambda d: NOW + d * DAY)),
)


@given(st.lists(fact, min_size=1, max_size=10), st.randoms())
def test_status_ignores_fact_order_and_repeats(facts, rnd):
    def fold(seq):
        marks: dict[str, datetime | None] = {"grant": None, "cancel": None, "expire": None}
        for kind, until in seq:
            u = until or FOREVER
            cur = marks[kind]
            marks[kind] = u if cur is None or u > cur else cur
        return subscription_status(marks["grant"], marks["cancel"], marks["expire"], NOW)

    shuffled = list(facts)
    rnd.shuffle(shuffled)
    assert fold(facts) == fold(shuffled) == fold(facts + shuffled)


def test_a_spend_event_is_an_eventsourcing_event():
    """The hot path encodes ``SpendState``; eventsourcing's Mapper reads it as
    ``TokenSpend.Spent`` and the aggregate it creates carries the same values."""
    from eventsourcing.persistence import Mapper, StoredEvent

    from ledger.domain.events import (
        SPEND_TOPIC,
        SPENT_TOPIC,
        MsgspecTranscoder,
        SpendState,
        TokenSpend,
        decode_spend,
        encode_spend,
        spend_id,
    )

    state = SpendState(
        originator_topic=SPEND_TOPIC,
        timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        customer="a@b.c",
        amount=3,
        idempotency_key="k-1",
        reason="chat",
        balance_after=7,
    )
    raw = encode_spend(state)
    assert decode_spend(raw) == state
    eid = spend_id("a@b.c", "k-1")
    assert eid == spend_id("a@b.c", "k-1") != spend_id("a@b.c", "k-2")
    assert spend_id("a@b.c", "k-1") != spend_id("a@b.cx", "-1")
    event = Mapper(transcoder=MsgspecTranscoder()).to_domain_event(
        StoredEvent(originator_id=eid, originator_version=1, topic=SPENT_TOPIC, state=raw)
    )
    assert type(event) is TokenSpend.Spent
    spend = event.mutate(None)
    assert isinstance(spend, TokenSpend)
    assert (spend.id, spend.customer, spend.amount, spend.balance_after) == (eid, "a@b.c", 3, 7)
    assert spend.created_on == state.timestamp


def test_package_prices_setting_is_parsed_and_validated():
    from ledger.config import ConfigError, load_settings

    env = {"LEDGER_TOKEN_PACKAGES": "silver=5,gold=100", "LEDGER_PACKAGE_PRICES": "silver=50000"}
    settings = load_settings(env)
    assert settings.package_prices == {"silver": 50000}
    assert load_settings({}).package_prices is None
    # The projections read the same variables the same way.
    cat = Catalogue.from_env(env)
    assert dict(cat.tokens) == settings.token_packages
    assert dict(cat.prices or {}) == settings.package_prices
    with pytest.raises(ConfigError, match="package_prices"):
        load_settings({"LEDGER_PACKAGE_PRICES": "silver=cheap"})
