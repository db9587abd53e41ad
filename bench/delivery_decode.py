"""CPU-time A/B of the delivery Structs: declared flat (as before the ``dedup`` branch) vs
derived from the one field list ``ledger.domain.events.DeliveryFields``.

Decodes (and encodes) the same stored delivery states with both, alternating A and B within
each round, and prints the median process CPU time per state of each. The states are
``bench/projection_events.py``'s deliveries (the four providers' shapes, as stored).

    python -m bench.delivery_decode --states 5000 --rounds 41 --repeat 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgspec

from bench.projection_events import _delivery_row
from ledger.audit.rows import StrictDelivery
from ledger.domain.events import DeliveryState
from ledger.outbox import reading


def flat(name: str, types: dict[str, Any], **config: Any) -> type[msgspec.Struct]:
    """A: ``DeliveryState``'s fields (with ``types`` for some) declared directly on one
    Struct with no base, as the three were declared before."""
    fields = [
        (f.name, types.get(f.name, f.type), f.default)
        if f.default is not msgspec.NODEFAULT
        else (f.name, types.get(f.name, f.type))
        for f in msgspec.structs.fields(DeliveryState)
    ]
    return msgspec.defstruct(name, fields, **config)


OldState = flat("OldState", {}, frozen=True, kw_only=True)
OldStrict = flat(
    "OldStrict", {"body_b64": bytes}, frozen=True, kw_only=True, forbid_unknown_fields=True
)
OldOutbox = flat("OldOutbox", {"headers": msgspec.Raw})


def cpu_per_item(work: Callable[[], Any], n: int) -> float:
    t = time.process_time()
    work()
    return (time.process_time() - t) / n * 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--states", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--repeat", type=int, default=4, help="passes over the states a sample")
    args = ap.parse_args()
    states = [_delivery_row(i)[3] for i in range(args.states)]
    n = len(states) * args.repeat

    def decoding(struct: type) -> Callable[[], Any]:
        decode = msgspec.json.Decoder(struct).decode

        def run() -> None:
            for _ in range(args.repeat):
                for s in states:
                    decode(s)

        return run

    def encoding(struct: type) -> Callable[[], Any]:
        encode = msgspec.json.Encoder().encode
        built = [msgspec.json.decode(s, type=struct) for s in states]

        def run() -> None:
            for _ in range(args.repeat):
                for b in built:
                    encode(b)

        return run

    # Same values, same bytes back: the A/B compares like with like.
    for s in states:
        old, new = msgspec.json.decode(s, type=OldState), msgspec.json.decode(s, type=DeliveryState)
        assert msgspec.structs.asdict(old) == msgspec.structs.asdict(new)
        assert msgspec.json.encode(new) == msgspec.json.encode(old) == s
        assert msgspec.structs.asdict(
            msgspec.json.decode(s, type=OldStrict)
        ) == msgspec.structs.asdict(msgspec.json.decode(s, type=StrictDelivery))

    cases = {
        "audit StrictDelivery decode": (decoding(OldStrict), decoding(StrictDelivery)),
        "outbox _Delivery decode": (decoding(OldOutbox), decoding(reading._Delivery)),
        "DeliveryState decode": (decoding(OldState), decoding(DeliveryState)),
        "DeliveryState encode": (encoding(OldState), encoding(DeliveryState)),
    }
    for name, (a, b) in cases.items():
        a(), b()  # warm up
        old_ns, new_ns = [], []
        for r in range(args.rounds):
            first, second = ((a, old_ns), (b, new_ns)) if r % 2 == 0 else ((b, new_ns), (a, old_ns))
            for work, out in (first, second):
                out.append(cpu_per_item(work, n))
        o, w = statistics.median(old_ns), statistics.median(new_ns)
        paired = statistics.median(b / a for a, b in zip(old_ns, new_ns, strict=True))
        print(
            f"{name:28} old {o:7.1f} ns/state  new {w:7.1f} ns/state"
            f"  new/old {w / o:.3f}  median of paired rounds {paired:.3f}"
        )


if __name__ == "__main__":
    main()
