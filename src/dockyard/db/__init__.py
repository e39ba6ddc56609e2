"""Metadata: schema, migrations and queries grouped by entity (SQLAlchemy Core)."""
