"""cvrl_tf: Spatiotemporal Contrastive Video Representation Learning in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
