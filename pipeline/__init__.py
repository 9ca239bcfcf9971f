"""The model side: the request model, loading, the tiny model, the engine and the service."""
