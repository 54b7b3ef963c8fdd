"""Precoders: encoder-side down-sampling and decoder-side restoration (DVP, ViSTRA)."""
