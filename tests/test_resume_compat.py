"""Resume across schema growth: a run or study written before a recipe field existed still resumes,
while any real change to the recipe or the plan is still refused."""

import hashlib
import json
import os

import pytest
import yaml

from keras_tl import checkpoint
from keras_tl import recipe as recipe_lib
from keras_tl.errors import WorkdirError
from keras_tl.study import plan as plan_lib
from keras_tl.study import runner

BASE = """
name: base
data: {source: synthetic_galaxies, synthetic: {count: 100}, image_size: [32, 32], batch_size: 8}
model: {backbone: resnet50, weights: none}
train:
  phases:
    - {trainable: head, epochs: 1}
    - {trainable: all, epochs: 1, lr: 1.0e-4}
"""

# Fields added after studies had been started (data.nan, data.scale, model.bn_momentum): a file
# written before them lacks them entirely.
LATER_FIELDS = (("data", "nan"), ("data", "scale"), ("model", "bn_momentum"))


def _without_later_fields(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    for section, key in LATER_FIELDS:
        del d[section][key]
    return d


def test_canonical_keeps_only_values_off_their_defaults():
    r = recipe_lib.loads(BASE)
    c = recipe_lib.canonical(r)
    assert c["data"] == {"synthetic": {"count": 100}, "image_size": [32, 32], "batch_size": 8}
    assert c["model"] == {"backbone": "resnet50", "weights": "none"}
    assert c["train"] == {"phases": [{}, {"trainable": "all", "lr": 1e-4}]}
    assert "export" not in c and "seed" not in c
    assert recipe_lib.canonical(recipe_lib.Recipe()) == {}


def test_same_recipe_ignores_missing_default_fields_but_not_real_changes():
    r = recipe_lib.loads(BASE)
    old_text = yaml.safe_dump(_without_later_fields(recipe_lib.to_dict(r)), sort_keys=False)
    assert old_text != recipe_lib.dump(r)
    assert recipe_lib.same_recipe(old_text, r)
    changed = recipe_lib.replace(r, ["model.bn_momentum=0.9"])
    assert not recipe_lib.same_recipe(old_text, changed)
    assert not recipe_lib.same_recipe(recipe_lib.dump(r), recipe_lib.replace(r, ["data.batch_size=16"]))
    assert not recipe_lib.same_recipe("data: {no_such_key: 1}\n", r)


def test_run_dir_from_before_a_field_resumes(tmp_path):
    r = recipe_lib.loads(BASE)
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "recipe.yaml").write_text(yaml.safe_dump(_without_later_fields(recipe_lib.to_dict(r)), sort_keys=False))
    assert checkpoint.check_workdir(str(wd), r) is True
    with pytest.raises(WorkdirError, match="different recipe"):
        checkpoint.check_workdir(str(wd), recipe_lib.replace(r, ["data.nan=zero"]))


def _plan(tmp_path, overrides=()):
    (tmp_path / "base.yaml").write_text(BASE)
    path = tmp_path / "study.yaml"
    path.write_text("extends: base.yaml\nname: s\nstudy:\n  init: [none, imagenet]\n  seeds: 2\n")
    return plan_lib.load_plan(str(path), list(overrides))


def _legacy_fingerprint(data: dict) -> str:
    """The rule before: a hash of the whole plan JSON (full base recipe) without its source."""
    data = {k: v for k, v in data.items() if k != "source"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=list, separators=(",", ":")).encode()).hexdigest()[:16]


def test_study_from_before_a_field_resumes_and_changes_are_refused(tmp_path):
    plan = _plan(tmp_path)
    data = plan.to_json()
    # A new field at its default changes nothing...
    assert plan_lib.fingerprint_of({**data, "base_recipe": _without_later_fields(data["base_recipe"])}) == plan.fingerprint()
    study = dict(data["study"])
    del study["train_images"]  # a study key added later, at its default
    assert plan_lib.fingerprint_of({**data, "study": study}) == plan.fingerprint()
    # ...while a real change does.
    assert _plan(tmp_path, ["model.bn_momentum=0.9"]).fingerprint() != plan.fingerprint()
    assert _plan(tmp_path, ["study.seeds=3"]).fingerprint() != plan.fingerprint()

    # A plan.json written by the old code: full base recipe without the later fields, old-rule fingerprint.
    old = {**data, "base_recipe": _without_later_fields(data["base_recipe"])}
    old = {"fingerprint": _legacy_fingerprint(old), **old}
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "plan.json").write_text(json.dumps(old, indent=2))
    assert old["fingerprint"] != plan.fingerprint()
    runner.write_plan(str(wd), plan)  # accepted
    assert runner.check_plan(str(wd), plan)
    assert json.loads((wd / "plan.json").read_text()) == old  # and left as it was
    with pytest.raises(WorkdirError, match="different study plan"):
        runner.check_plan(str(wd), _plan(tmp_path, ["data.batch_size=16"]))
    assert not runner.check_plan(str(tmp_path / "empty"), plan)
    assert not os.path.exists(tmp_path / "empty")
