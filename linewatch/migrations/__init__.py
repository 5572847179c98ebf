"""Alembic migrations of the main store (see env.py); a package so it installs with linewatch."""
