"""Adapters: the registry state machine, source resolution and (for the engine) PEFT checks."""
