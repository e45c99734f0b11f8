"""optim: each optimizer gets the recipe's weight decay as written (0 means none, adamw too)."""

import pytest

from keras_tl import optim
from keras_tl import recipe as recipe_lib


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-4])
def test_weight_decay_is_the_recipes(name, weight_decay):
    opt = optim.make_optimizer(recipe_lib.Phase(optimizer=name, weight_decay=weight_decay), steps_per_epoch=10)
    assert type(opt).__name__.lower() == name
    # Keras reads None as no decay; AdamW needs a number (it used to turn 0 into 1e-4 silently).
    assert (opt.weight_decay or 0.0) == pytest.approx(weight_decay)


def test_schedule_is_constant_float_or_warmup_then_cosine():
    assert optim.lr_schedule(recipe_lib.Phase(lr=0.1), steps_per_epoch=10) == 0.1
    sched = optim.lr_schedule(recipe_lib.Phase(lr=0.1, epochs=3, warmup_epochs=1, schedule="cosine"), steps_per_epoch=10)
    lrs = [float(sched(s)) for s in (0, 9, 10, 30)]
    assert lrs[0] == pytest.approx(0.01) and lrs[1] == pytest.approx(0.1) and lrs[2] == pytest.approx(0.1) and lrs[3] == pytest.approx(0.0, abs=1e-7)
