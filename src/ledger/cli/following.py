"""Following rebuilds until they switch: a progress line (rate over the last few seconds,
ETA) on a terminal, a line every few seconds otherwise (``ledger projections rebuild``)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque

import click

from ledger.readmodels.access import ReadModels


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def progress_line(done: int, total: int, rate: float, width: int = 30) -> str:
    """``[#####.....]  45%  450,000/1,000,000 events  23,400 ev/s  ETA 00:23``"""
    frac = 1.0 if total <= 0 else min(1.0, done / total)
    filled = int(frac * width)
    eta = "--:--" if rate <= 0 else _fmt_duration((total - done) / rate)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {frac * 100:3.0f}%  "
        f"{done:,}/{total:,} events  {rate:,.0f} ev/s  ETA {eta}"
    )


async def follow(rm: ReadModels, name: str, generation: int, every: float = 0.5) -> None:
    """Print a progress line (rate over the last few seconds, ETA) until the switch."""
    samples: deque[tuple[float, int]] = deque(maxlen=10)
    tty = sys.stderr.isatty()
    started = last_print = time.monotonic()
    first = True
    while True:
        st = next((s for s in await rm.status() if s.name == name), None)
        if st is None:
            raise click.ClickException(f"projection {name} is not registered")
        if st.building_generation != generation:
            if st.live_generation != generation:
                raise click.ClickException(
                    f"generation {generation} is no longer being built (live: "
                    f"g{st.live_generation}, building: {st.building_generation})"
                )
            # The last line: everything folded, at the overall rate.
            elapsed = max(time.monotonic() - started, 1e-3)
            line = progress_line(st.position, st.position, st.position / elapsed)
            click.echo(("\r" if tty else "") + line + f"  in {elapsed:.1f} s", err=True)
            return
        now = time.monotonic()
        done_events = st.building_position or 0
        samples.append((now, done_events))
        t0, d0 = samples[0]
        rate = (done_events - d0) / (now - t0) if now > t0 else 0.0
        line = progress_line(done_events, st.head, rate)
        if st.state == "failed" and st.error:
            line += f"  FAILED (retrying): {st.error[:120]}"
        if tty:
            click.echo("\r" + line, nl=False, err=True)
        elif first or now - last_print >= 5:  # a log-friendly line every few seconds
            click.echo(line, err=True)
            last_print, first = now, False
        await asyncio.sleep(every)


async def follow_all(rm: ReadModels, generations: dict[str, int], every: float = 0.5) -> None:
    """One progress line for several rebuilds (events folded by all of them, over the
    events all of them must fold) until every one has switched."""
    samples: deque[tuple[float, int]] = deque(maxlen=10)
    tty = sys.stderr.isatty()
    started = last_print = time.monotonic()
    first = True
    while True:
        found = {s.name: s for s in await rm.status() if s.name in generations}
        done_events = total = live = 0
        for name, generation in generations.items():
            st = found.get(name)
            if st is None:
                raise click.ClickException(f"projection {name} is not registered")
            if st.building_generation == generation:
                done_events += st.building_position or 0
                total += st.head
            elif st.live_generation == generation:
                live += 1
                done_events += st.position
                total += st.position
            else:
                raise click.ClickException(
                    f"generation {generation} of {name} is no longer being built (live: "
                    f"g{st.live_generation}, building: {st.building_generation})"
                )
        now = time.monotonic()
        if live == len(generations):
            elapsed = max(now - started, 1e-3)
            line = progress_line(done_events, total, done_events / elapsed)
            click.echo(
                ("\r" if tty else "") + f"{live}/{live} live  {line}  in {elapsed:.1f} s",
                err=True,
            )
            return
        samples.append((now, done_events))
        t0, d0 = samples[0]
        rate = (done_events - d0) / (now - t0) if now > t0 else 0.0
        line = f"{live}/{len(generations)} live  " + progress_line(done_events, total, rate)
        if tty:
            click.echo("\r" + line, nl=False, err=True)
        elif first or now - last_print >= 5:
            click.echo(line, err=True)
            last_print, first = now, False
        await asyncio.sleep(every)
