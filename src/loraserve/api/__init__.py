"""HTTP layer: FastAPI routes that drive the model manager; it never does model work itself."""
