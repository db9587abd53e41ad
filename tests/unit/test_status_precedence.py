"""Order status mapping (providers.md) and precedence: arrival order never matters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.payments import orderstatus
from ledger.payments.orderstatus import (
    Entry,
    fold,
    late_flags,
    midtrans_status,
    partner_status,
    rank,
)


@pytest.mark.parametrize(
    ("transaction_status", "fraud_status", "expected"),
    [
        ("capture", "accept", "paid"),
        ("capture", None, "paid"),
        ("capture", "challenge", "pending"),
        ("capture", "deny", "failed"),
        ("settlement", None, "paid"),
        ("pending", None, "pending"),
        ("authorize", None, "pending"),
        ("deny", None, "failed"),
        ("cancel", None, "failed"),
        ("expire", None, "failed"),
        ("failure", None, "failed"),
        ("refund", None, "refunded"),
        ("partial_refund", None, "partially_refunded"),
        ("chargeback", None, "charged_back"),
        ("partial_chargeback", None, "partially_charged_back"),
    ],
)
def test_midtrans_mapping(transaction_status, fraud_status, expected):
    assert midtrans_status(transaction_status, fraud_status) == expected


def test_midtrans_unknown_status_is_an_error():
    with pytest.raises(orderstatus.UnknownStatus, match="transaction_status"):
        midtrans_status("teleported")


@pytest.mark.parametrize(
    ("status", "expected"),
    [("PENDING", "pending"), ("PAID", "paid"), ("SETTLED", "paid"), ("EXPIRED", "failed")],
)
def test_xendit_mapping(status, expected):
    assert orderstatus.xendit_status(status) == expected


def test_partner_mapping():
    assert partner_status("booking.paid", "LUNAS") == "paid"
    assert partner_status("booking.paid", None) == "paid"
    assert partner_status("booking.updated", "DP") == "pending"
    assert partner_status("booking.updated", None) == "pending"


def test_precedence_order():
    chain = [
        "pending",
        "failed",
        "paid",
        "partially_refunded",
        "refunded",
        "partially_charged_back",
        "charged_back",
    ]
    assert [rank(s) for s in chain] == sorted(rank(s) for s in chain)
    assert len(set(orderstatus.RANK.values())) == len(orderstatus.RANK)


def test_late_pending_or_expire_after_paid_does_not_downgrade():
    statuses = [
        midtrans_status("settlement"),
        midtrans_status("pending"),
        midtrans_status("expire"),
    ]
    assert fold(statuses) == "paid"
    history = [Entry(i, f"e{i}", "x", s) for i, s in enumerate(statuses)]
    assert late_flags(history) == [False, True, True]
    # In the natural order nothing is late.
    natural = [Entry(0, "a", "pending", "pending"), Entry(1, "b", "settlement", "paid")]
    assert late_flags(natural) == [False, False]


def test_a_repeated_status_is_not_late():
    history = [Entry(0, "a", "settlement", "paid"), Entry(1, "b", "capture", "paid")]
    assert late_flags(history) == [False, False]


statuses = st.lists(st.sampled_from(sorted(orderstatus.RANK)), min_size=1, max_size=12)


@given(statuses, st.randoms())
def test_fold_ignores_arrival_order_and_repeats(seq, rnd):
    shuffled = list(seq)
    rnd.shuffle(shuffled)
    assert fold(shuffled) == fold(seq) == fold(seq + shuffled)
    assert fold(seq) == max(seq, key=rank)


def test_fold_of_nothing_is_none():
    assert fold([]) is None


def test_the_deciding_notification_ignores_arrival_order():
    a = Entry(1, "00000000-0000-0000-0000-00000000000a", "settlement", "paid", "10.00")
    b = Entry(2, "00000000-0000-0000-0000-00000000000b", "capture", "paid", "10.00")
    p = Entry(3, "00000000-0000-0000-0000-00000000000c", "pending", "pending", "99.00")
    assert orderstatus.decide([a, b, p]) is b
    assert orderstatus.decide([p, b, a]) is b
    assert orderstatus.decide([p]) is p
