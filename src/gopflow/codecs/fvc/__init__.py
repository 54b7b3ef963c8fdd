"""FVC (Hu et al., CVPR 2021): the learned inter codec in feature space."""
