"""AnoPLe few-shot anomaly detection on a frozen open_clip model: pure model code.

Imports torch, open_clip, safetensors and numpy only; nothing here knows about cameras, MQTT,
databases or configuration files, and it imports nothing of linewatch outside this package.
"""
