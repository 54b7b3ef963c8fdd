"""Training jobs of the learned models (precoders, codecs, the mode predictor).

- :mod:`~gopflow.training.data`: training clips, data hash, the frame pool and its crops.
- :mod:`~gopflow.training.common`: result record, learning-rate schedule, checkpoint writes,
  loss plot and provenance shared by every trainer.
- :mod:`~gopflow.training.x264`: real x264 codings for training inputs and evaluation.
- :mod:`~gopflow.training.precoders`: DVP downscalers and ViSTRA up-samplers/interpolator.
- :mod:`~gopflow.training.codecs`: the learned video codecs (intra, DVC, FVC).
- :mod:`~gopflow.training.mode`: the QRO mode predictor.
- :mod:`~gopflow.training.evaluate`: a registered precoder against plain resampling.

Each takes a frozen config or typed arguments; the command line lives in
:mod:`gopflow.cli.train`.
"""
