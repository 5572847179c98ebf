"""linewatch: production-line visual inspection with few-shot AnoPLe anomaly detection."""

__version__ = "0.1.0"
