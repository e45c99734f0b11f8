"""Diagnostics behind ``keras_tl.probe`` and ``keras_tl.visualize``.

features: one forward pass → pooled features after every stage plus BN-input moments; disk cache.
probes:   linear (logistic regression, C by cross-validation) and cosine kNN probes per stage.
bn_gap:   distance between the data's BN-input statistics and a layer's running statistics.
cka:      linear CKA between two representations; relative weight change per stage.
gradcam:  Grad-CAM at the backbone's last stage and the most active feature maps per stage.

Nothing here imports TensorFlow at package import; each module imports what it needs.
"""
