"""Loading models keras_tl wrote: ``.keras`` files, in safe mode, with keras_tl's custom layers registered."""

from __future__ import annotations

from keras_tl.errors import UserError


def load_keras_model(path: str):
    """A .keras file written by keras_tl, loaded in safe mode without its optimizer."""
    import keras

    import keras_tl.model  # noqa: F401  (registers keras_tl's custom layers for safe-mode loading)

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load the model ({' '.join(str(e).split())[:200]}); expected a .keras file written by keras_tl") from None
