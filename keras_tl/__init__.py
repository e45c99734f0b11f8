"""keras_tl: transfer learning with evidence for Keras backbones."""

__version__ = "0.1.0"
