"""The journal, the daemon's transactional outbox: ``records`` (what a record holds and its checked JSON
payloads), ``outbox`` (the SQLite file: appending a batch, reading after a cursor, keeping it bounded) and
``forwarding`` (one runner per sink that replays the journal in order from its cursor)."""
