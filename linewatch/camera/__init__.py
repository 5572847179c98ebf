"""Camera input: frame sources (OpenCV device/URL, video file, image folder, synthetic) in ``sources`` and the
per-camera reader thread (reconnect with backoff, fps limit, ROI crop, rotation, stalled status) in ``reader``."""
