"""The operator's web page: live view, review queue, history and models, served by the daemon's HTTP port."""
