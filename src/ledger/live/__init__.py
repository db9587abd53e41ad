"""The live feed: the stream hub behind server-sent events."""
