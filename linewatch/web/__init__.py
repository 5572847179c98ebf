"""The operator's web page: live view, review queue, history and models, served by the daemon's HTTP port.

May import: the shared modules, ``pipeline`` (journal records and errors) and ``sinks`` (the store's
schema and helpers). What it asks of the running daemon comes through
:class:`linewatch.web.site.WebBackend`, which ``daemon/web_mount.py`` implements; never ``daemon`` or ``cli``.
"""
