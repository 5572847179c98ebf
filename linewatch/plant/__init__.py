"""Plant-floor protocols: stations and triggers (a part's verdict from its cameras), the OPC UA server."""
