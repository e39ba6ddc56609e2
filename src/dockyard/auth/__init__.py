"""Identities, the token service and access decisions."""
