"""Training jobs of the learned models (precoders, codecs, the mode predictor)."""
