"""Serving: worker processes and groups, model services and the model manager."""
