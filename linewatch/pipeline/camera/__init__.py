"""Camera input: frame sources (OpenCV device/URL, video file, image folder, synthetic) in ``sources``, the
per-camera reader thread (reconnect with backoff, fps limit, ROI crop, rotation, stalled status) in
``reader``, and the synthetic product that the built-in camera and the demo draw from in ``synthetic``."""
