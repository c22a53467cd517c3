"""The channel registry: the in-process cache of channels and the YAML sync."""
