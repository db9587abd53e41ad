"""One module per sender: payload Structs, verifier and dedup key."""

from __future__ import annotations

from ledger.config import Settings
from ledger.ingest.providers.base import Accepted, Provider, Unauthorized, Unusable
from ledger.ingest.providers.mayar import Mayar
from ledger.ingest.providers.midtrans import Midtrans
from ledger.ingest.providers.partner import Partner
from ledger.ingest.providers.xendit import Xendit

__all__ = ["Accepted", "Provider", "Unauthorized", "Unusable", "build_providers"]


def build_providers(settings: Settings) -> dict[str, Provider]:
    """The enabled providers, each holding only its own secret."""
    d = settings.max_json_depth
    every: dict[str, Provider] = {
        "mayar": Mayar(settings.mayar_token, max_depth=d),
        "midtrans": Midtrans(settings.midtrans_server_key, max_depth=d),
        "xendit": Xendit(settings.xendit_token, max_depth=d),
        "partner": Partner(settings.partner_secret, max_depth=d),
    }
    return {name: p for name, p in every.items() if name in settings.providers}
