"""The append-only event store and its group commit."""
