"""Streaming packaging: per-GOP encoded segments of every rung -> CMAF fMP4 init and media
segments, an AAC audio rendition, HLS v7 playlists and a static DASH MPD.

Imports only ``media``, ``types``, ``fileio`` and ``errors`` (it sits beside ``codecs``).
"""
