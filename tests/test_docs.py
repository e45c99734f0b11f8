"""Figures in the README that a command prints must be what the command prints (issue 17: the
per-stage table for telescope.yaml had drifted from the code)."""

import os
import re

from keras_tl import recipe as recipe_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_block(after: str) -> str:
    """The first ```text block of README.md after the line containing ``after``."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index(after)
    m = re.search(r"```text\n(.*?)```", text[start:], re.S)
    assert m, after
    return m.group(1).rstrip("\n")


def stage_table(recipe_path: str, overrides, phase_index: int, num_classes: int) -> str:
    """The per-stage table keras_tl.train prints for one phase (built, not trained)."""
    import keras

    from keras_tl import freeze
    from keras_tl import model as model_lib

    recipe = recipe_lib.load(os.path.join(ROOT, recipe_path), overrides)
    keras.backend.clear_session()
    model = model_lib.build_model(recipe, num_classes)
    return freeze.format_table(freeze.apply_phase(model, recipe.train.phases[phase_index], recipe))


def test_readme_per_stage_table_is_what_telescope_yaml_prints():
    want = stage_table("recipes/telescope.yaml", ["model.weights=none"], 1, 10)
    got = readme_block("`telescope.yaml`'s fine-tune phase")
    assert got == want, f"README.md's table is stale; replace it with:\n{want}"
