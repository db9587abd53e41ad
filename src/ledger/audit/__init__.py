"""Finance audit: the index, as-of answers, the hash chain, the operator trail and API keys."""
