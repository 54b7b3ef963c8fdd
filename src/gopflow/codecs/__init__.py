"""Codecs: turn a GOP's frames into a bitstream (x264/x265 through ffmpeg; learned codecs)."""
