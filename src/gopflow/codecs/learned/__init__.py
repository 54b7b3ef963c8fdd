"""Learned video codecs (DVC, FVC, learned intra): bitstream format first (see the issue)."""
