"""Where journaled records go: the SQL store (SQLAlchemy, Alembic), the MQTT broker, evidence files on
disk, the HTTP port.

May import: the shared modules at the top of the package and ``pipeline`` (the journal's records they
consume). Never ``retrain``, ``web``, ``daemon`` or ``cli``.
"""
