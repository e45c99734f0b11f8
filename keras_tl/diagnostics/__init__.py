"""Diagnostics behind ``keras_tl.probe`` and ``keras_tl.visualize`` (those modules are the CLIs).

features: one forward pass → pooled features after every stage plus BN-input moments; disk cache;
          the cache key of a recipe's features; extraction for a recipe under given weights.
probes:   linear (logistic regression, C by cross-validation) and cosine kNN probes per stage.
bn_gap:   distance between the data's BN-input statistics and a layer's running statistics.
frechet:  Fréchet distance per stage between two datasets' features, with its split-half floor.
cka:      linear CKA between two representations, per stage of two models; relative weight change.
gradcam:  Grad-CAM at the backbone's last stage and the most active feature maps per stage.
plots:    the probe, BN-gap, Fréchet and compare plots.

Nothing here imports TensorFlow at package import; each module imports what it needs.
"""
