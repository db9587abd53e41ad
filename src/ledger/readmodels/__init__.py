"""Read models: the projection contract, generations, the runner, poison handling
and read access."""
