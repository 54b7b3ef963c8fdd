"""Learned video codecs (DVC, FVC, learned intra); their bitstream is docs/gflv-format.md."""
