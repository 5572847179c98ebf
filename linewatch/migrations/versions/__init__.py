"""Alembic revisions, oldest first: 0001, 0002, ... (ids are the file prefixes)."""
