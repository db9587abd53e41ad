"""HTTP controllers, one module per bounded context. Thin: they call the core."""
