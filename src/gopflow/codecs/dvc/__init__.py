"""DVC (Lu et al., CVPR 2019): the learned inter codec with optical-flow motion."""
