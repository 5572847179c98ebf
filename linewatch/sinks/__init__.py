"""Where journaled records go: the SQL store, the MQTT broker, evidence files on disk, the HTTP port."""
