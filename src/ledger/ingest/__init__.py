"""Ingest: verify a delivery on its raw bytes, interpret it, append it to the log."""
