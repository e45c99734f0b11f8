"""Input data: sources (directory | tfds | synthetic_galaxies), splits, augmentation, tf.data.

``build_datasets``, ``scan`` and ``Datasets`` are imported lazily so that
``import keras_tl.data.synthetic`` (numpy only) does not pull in TensorFlow.
"""

__all__ = ["build_datasets", "scan", "Datasets"]


def __getattr__(name):
    if name in __all__:
        from keras_tl.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'keras_tl.data' has no attribute {name!r}")
