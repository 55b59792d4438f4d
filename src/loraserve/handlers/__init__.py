"""Handlers: the DJL-compatible Input/Output API, worker processes and the built-in handlers."""
