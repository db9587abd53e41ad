"""The outbox: messages derived from payments, their dispatch and the senders."""
