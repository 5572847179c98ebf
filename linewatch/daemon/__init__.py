"""The running service: ``linewatch run``.

``lifecycle`` (the process: logging, signals, reloads, the demo-model bootstrap, during which ``starting``
answers on the HTTP port) starts ``app`` (the
composition root: builds everything from the config, starts it in order, stops it in reverse). Beside
them: ``cameras`` (source per camera config), ``outputs`` (the journal's consumers wired to the sinks),
``feedback`` (labels accepted into the journal), ``state`` and ``metrics`` (the read-only view, the
Prometheus families and the health verdict), ``control`` (the HTTP control routes), ``web_mount`` (the
operator page's backend), ``housekeeping`` (keeping the journal bounded) and ``systemd`` (notify and
watchdog).

May import every layer below it (shared modules, ``anople``, ``model``, ``pipeline``, ``sinks``,
``retrain``, ``web``); never ``cli``. Only ``app`` and ``lifecycle`` import ``app``: the routes and the
page get what they need through :class:`linewatch.daemon.control.DaemonControl`.
"""
