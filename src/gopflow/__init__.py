"""gopflow: GOP-parallel video preprocessing and transcoding on Ray.

A video is cut into closed, scene-aligned GOPs; Ray workers decode their own GOP and hand it
to x264/x265 through ffmpeg (learned precoders and codecs plug into the same stages); the
GOPs are joined, in order, into one file. See ``gopflow.jobs.transcode`` for the data flow.
"""

__version__ = "0.1.0"
