"""Token accounts: spending against the balances read model."""
