"""Shared test setup: quiet TensorFlow's C++ logging before anything imports it, and keep every
test (and every process it starts) off the internet."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A request for ImageNet weights that are not in a test's own Keras cache fails at once at this
# mirror directory, which does not exist, instead of reaching storage.googleapis.com. Tests of
# the download path point KERAS_TL_WEIGHTS_MIRROR at their own 127.0.0.1 servers.
os.environ["KERAS_TL_WEIGHTS_MIRROR"] = os.path.join(tempfile.gettempdir(), "keras_tl-tests-offline-no-mirror")
