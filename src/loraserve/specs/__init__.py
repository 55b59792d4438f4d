"""Wire protocols (LMI, OpenAI): each parses its requests once, at the edge, into the engine's
typed ``GenerateRequest`` and encodes the typed results back (LitServe's specs are the model)."""
