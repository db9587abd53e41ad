"""Reconciliation with the providers' own status APIs (ADR 0017).

``clients`` asks Midtrans and Xendit (aiohttp: timeouts, retries honouring ``Retry-After``,
a per-provider rate limit); ``answers`` reads an answer (pure: signature, unknown order,
status); ``check`` records one answer about one order as a ``Reconciliation.Checked`` event.
"""
