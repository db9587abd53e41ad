"""Events and their state Structs, and how their ids are derived.

Stored topics name this package (``ledger.domain:Delivery.Received``), so the aggregates
are importable from here: eventsourcing resolves a topic by importing its module (ADR 0014).
"""

from ledger.domain.events import Delivery, OperatorAction, Reconciliation, TokenSpend
from ledger.domain.orders import OrderRegistration

__all__ = ["Delivery", "OperatorAction", "OrderRegistration", "Reconciliation", "TokenSpend"]
