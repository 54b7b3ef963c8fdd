"""Media access: ffmpeg discovery, probing and frame-accurate GOP reading (PyAV)."""
