"""Study plans: strict study section, expansion, pairing, arm ids, cost, CLI dry run."""

import os
import subprocess
import sys
import textwrap

import pytest

from keras_tl import recipe as recipe_lib
from keras_tl.errors import UserError
from keras_tl.study import plan as plan_lib

BASE = """
name: base
seed: 0
data:
  source: synthetic_galaxies
  synthetic: {count: 200}
  image_size: [32, 32]
  batch_size: 8
  val_fraction: 0.2
  test_fraction: 0.2
  split_seed: 7
model:
  backbone: resnet50
  weights: none
train:
  phases:
    - {name: warmup, trainable: head, epochs: 1, lr: 1.0e-3}
    - {name: finetune, trainable: [conv5, head], epochs: 2, lr: 1.0e-4}
"""


def write_study(tmp_path, study: str, base: str = BASE) -> str:
    (tmp_path / "base.yaml").write_text(base)
    path = tmp_path / "study.yaml"
    path.write_text("extends: base.yaml\nname: s\nstudy:\n" + textwrap.indent(textwrap.dedent(study), "  "))
    return str(path)


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flat(v, key))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(flat(x, f"{key}.{i}"))
        else:
            out[key] = v
    return out


def differing(r1, r2):
    a, b = flat(recipe_lib.to_dict(r1)), flat(recipe_lib.to_dict(r2))
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


def test_product_expansion_and_pairing(tmp_path):
    path = write_study(tmp_path, """
        init: [none, tests/other.weights.h5]
        freeze: [head_only, from_conv4, all]
        data_fraction: [0.25, 1.0]
        seeds: 3
        baseline: {init: none}
    """)
    plan = plan_lib.load_plan(path)
    assert len(plan.arms) == 12 and len(plan.runs) == 36
    assert plan.varied == ("init", "freeze", "data_fraction")
    axis_keys = {"model.weights", "train.phases.1.trainable", "data.fraction"}
    for arm in plan.arms:
        assert {k if not k.startswith("train.phases.1.trainable") else "train.phases.1.trainable" for k in differing(arm.recipe, plan.base)} <= axis_keys
        ref = plan.reference_of(arm)
        if arm.values["init"] == "none":
            assert ref is None
        else:
            # The comparison pairs arms that differ in the init and nothing else.
            assert differing(arm.recipe, ref.recipe) == {"model.weights"}
    fz = {a.values["freeze"]: a.recipe.train.phases[1].trainable for a in plan.arms}
    assert fz == {"head_only": "head", "from_conv4": {"from": "conv4"}, "all": "all"}
    assert all(a.recipe.train.phases[0].trainable == "head" for a in plan.arms)
    for run in plan.runs:
        arm = plan.arm(run.arm_id)
        assert differing(run.recipe, arm.recipe) <= {"seed"}
        assert run.recipe.seed == run.seed
        assert run.recipe.data.split_seed == 7
    seeds_per_arm = {a.id: sorted(r.seed for r in plan.runs if r.arm_id == a.id) for a in plan.arms}
    assert set(map(tuple, seeds_per_arm.values())) == {(0, 1, 2)}
    # Seed-major order: the first len(arms) runs are seed 0 of every arm.
    assert {r.seed for r in plan.runs[: len(plan.arms)]} == {0}


def test_arm_ids_stable_unique_and_readable(tmp_path):
    path = write_study(tmp_path, "init: [none, a/b.weights.h5]\ndata_fraction: [0.1, 1.0]\n")
    a, b = plan_lib.load_plan(path), plan_lib.load_plan(path)
    assert [x.id for x in a.arms] == [x.id for x in b.arms]
    assert a.fingerprint() == b.fingerprint()
    ids = [x.id for x in a.arms]
    assert len(set(ids)) == len(ids)
    assert ids[0].startswith("scratch_0.1_data-")
    assert any(i.startswith("file-b_1_data-") for i in ids)
    assert all(all(c.isalnum() or c in "._-" for c in i) for i in ids)
    c = plan_lib.load_plan(path, ["data.batch_size=4"])
    assert c.fingerprint() != a.fingerprint()


@pytest.mark.parametrize("study, needle", [
    ("sedes: 3\ninit: [none]\n", "study.sedes: unknown key (did you mean seeds?)"),
    ("init: [none]\nfreeze: [from-conv4]\n", "did you mean from_conv4?"),
    ("init: none\n", "study.init: expected a non-empty list"),
    ("init: [none]\nseeds: 0\n", "study.seeds"),
    ("init: [none]\ndata_fraction: [0, 1]\n", "study.data_fraction"),
    ("init: [none]\nbaseline: {inti: none}\n", "did you mean init?"),
    ("init: [none, none]\n", "repeated value"),
    ("init: [none]\nbaseline: {init: imagenet}\n", "study.baseline.init"),
    ("init: [none]\nschedule_multiplier: [1.5]\n", "not a whole number of epochs"),
    ("seeds: 2\n", "varies nothing"),
    ("init: [none]\narms: [{init: none}]\n", "not both"),
    ("init: [none]\nlr_grid: [0]\n", "study.lr_grid"),
])
def test_strict_study_errors(tmp_path, study, needle):
    path = write_study(tmp_path, study)
    with pytest.raises(UserError) as e:
        plan_lib.load_plan(path)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_invalid_combination_names_arm_and_exclude_fixes_it(tmp_path):
    path = write_study(tmp_path, "cut_after: [null, conv4]\nfreeze: [head_only, from_conv5]\n")
    with pytest.raises(UserError) as e:
        plan_lib.load_plan(path)
    assert "{from_conv5, cut_after_conv4}" in str(e.value) and "study.exclude" in str(e.value)
    path = write_study(tmp_path, "cut_after: [null, conv4]\nfreeze: [head_only, from_conv5]\nexclude: [{cut_after: conv4, freeze: from_conv5}]\n")
    plan = plan_lib.load_plan(path)
    assert len(plan.arms) == 3
    cut = [a for a in plan.arms if a.values["cut_after"] == "conv4"]
    assert cut[0].recipe.model.cut_after == "conv4"


def test_schedule_multiplier_reinit_and_lr_grid(tmp_path):
    base = BASE.replace("weights: none", "weights: some.weights.h5")
    path = write_study(tmp_path, """
        schedule_multiplier: [1, 3]
        reinit: [[], [conv5]]
        lr_grid: [1.0e-3, 1.0e-4]
        seeds: 2
        baseline: {schedule_multiplier: 1, reinit: []}
    """, base)
    plan = plan_lib.load_plan(path)
    assert len(plan.arms) == 4 and len(plan.runs) == 16
    x3 = [a for a in plan.arms if a.values["schedule_multiplier"] == 3][0]
    assert [p.epochs for p in x3.recipe.train.phases] == [3, 6]
    re5 = [a for a in plan.arms if a.values["reinit"] == ["conv5"]][0]
    assert re5.recipe.model.reinit == ("conv5",)
    lrs = {(r.arm_id, r.seed): set() for r in plan.runs}
    for r in plan.runs:
        assert r.recipe.train.phases[1].lr == r.lr and r.recipe.train.phases[0].lr == 1e-3
        lrs[(r.arm_id, r.seed)].add(r.lr)
        assert r.key == f"{r.arm_id}/lr{r.lr_index}/seed{r.seed}"
    assert all(v == {1e-3, 1e-4} for v in lrs.values())
    base_arm = [a for a in plan.arms if a.values == {"reinit": [], "schedule_multiplier": 1}][0]
    assert plan.reference_of(base_arm) is None
    assert all(plan.reference_of(a) is base_arm for a in plan.arms if a is not base_arm)


def test_explicit_arms_and_study_overrides(tmp_path):
    path = write_study(tmp_path, """
        arms:
          - {init: none, freeze: all}
          - {init: x.weights.h5, freeze: head_only}
        seeds: 4
    """)
    plan = plan_lib.load_plan(path, ["study.seeds=2", "data.batch_size=4"])
    assert len(plan.arms) == 2 and len(plan.runs) == 4
    assert plan.base.data.batch_size == 4
    assert plan.study.baseline == {"init": "none"}  # default: first value of the first axis
    path = write_study(tmp_path, "arms: [{init: none, freeze: all}, {init: none}]\n")
    with pytest.raises(UserError, match="missing freeze"):
        plan_lib.load_plan(path)


def test_cost_estimate(tmp_path):
    path = write_study(tmp_path, "data_fraction: [0.5, 1.0]\nseeds: 2\nseconds_per_image: 0.01\n")
    plan = plan_lib.load_plan(path)
    cost = plan_lib.estimate_cost(plan)
    # 200 images, 60% train = 120; per run: 3 epochs × (60 | 120) images; 2 seeds.
    assert cost.runs == 4 and cost.epochs == 12
    assert cost.images == 2 * 3 * (60 + 120)
    assert cost.cpu_seconds == pytest.approx(cost.images * 0.01 + 4 * plan_lib.SECONDS_PER_RUN_OVERHEAD)
    text = plan_lib.format_plan(plan, cost)
    assert "4 runs" in text and "1,080 training images" in text and "CPU time" in text and "study.seconds_per_image" in text
    assert plan_lib.estimate_cost(plan, 0.5, "flag").cpu_seconds == pytest.approx(1080 * 0.5 + 4 * plan_lib.SECONDS_PER_RUN_OVERHEAD)


def _cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "keras_tl.study", *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_dry_run_and_user_error(tmp_path):
    path = write_study(tmp_path, "init: [none]\nfreeze: [head_only, all]\nseeds: 2\n")
    r = _cli("--recipe", path, "--dry_run", "--workdir", str(tmp_path / "wd"))
    assert r.returncode == 0, r.stderr
    assert "2 arms × 2 seeds = 4 runs" in r.stdout and "CPU time" in r.stdout
    assert not (tmp_path / "wd").exists()
    r = _cli("--recipe", path, "--dry_run", "--set", "study.sedes=3")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "did you mean seeds?" in r.stderr


_REPO_RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")
_STUDY_RECIPES = sorted(
    os.path.join(_REPO_RECIPES, f) for f in os.listdir(_REPO_RECIPES)
    if f.endswith(".yaml") and "study" in recipe_lib.load_raw(os.path.join(_REPO_RECIPES, f))
)


@pytest.mark.parametrize("path", _STUDY_RECIPES, ids=os.path.basename)
def test_repo_study_recipes_expand(path):
    plan = plan_lib.load_plan(path)
    assert plan.runs and plan.arms
    assert len({r.key for r in plan.runs}) == len(plan.runs)


def test_budget_study_reuses_the_transfer_study_runs():
    """survey_budget_study's x1 arms are, run for run, the same training recipes as
    survey_transfer_study's 100%-data runs (only the name differs), so finished runs can be copied."""
    def text(r):
        return "\n".join(l for l in recipe_lib.dump(r.recipe).splitlines() if not l.startswith("name:"))

    old = {text(r) for r in plan_lib.load_plan(os.path.join(_REPO_RECIPES, "survey_transfer_study.yaml")).runs}
    new = plan_lib.load_plan(os.path.join(_REPO_RECIPES, "survey_budget_study.yaml"))
    shared = [r for r in new.runs if text(r) in old]
    assert len(shared) == 16 and all("_x1_" in r.arm_id for r in shared)
    assert not [r for r in new.runs if "_x3_" in r.arm_id and text(r) in old]


def _reuse_tool():
    import importlib.util

    path = os.path.join(os.path.dirname(_REPO_RECIPES), "tools", "reuse_runs.py")
    spec = importlib.util.spec_from_file_location("reuse_runs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lite0_budget_study_reuses_the_head_study_runs(tmp_path):
    """lite0_budget_study's x1 arms are lite0_head_study's linear-head runs (only the name differs);
    tools/reuse_runs.py hard-links the finished ones and nothing else."""
    from keras_tl.study import runner

    tool = _reuse_tool()
    src = plan_lib.load_plan(os.path.join(_REPO_RECIPES, "lite0_head_study.yaml"))
    dst = plan_lib.load_plan(os.path.join(_REPO_RECIPES, "lite0_budget_study.yaml"))
    pairs = tool.matches(src, dst)
    assert len(pairs) == 24 and all("_x1_" in t.arm_id and s.arm_id in ("imagenet_head-none-51a93619", "scratch_head-none-3db77ceb")
                                    for t, s in pairs)
    src_dir, dst_dir = str(tmp_path / "src"), str(tmp_path / "dst")
    with pytest.raises(UserError, match="no plan.json"):  # a mistyped source workdir is an error, not "0 finished"
        tool.reuse(src, src_dir, dst, dst_dir, log=lambda s: None)
    runner.write_plan(src_dir, src)
    finished = [s for _, s in pairs][:3]
    for s in [r for r in src.runs if r not in [p for _, p in pairs]][:2] + finished:  # other arms' runs too
        d = runner.run_dir(src_dir, s)
        os.makedirs(os.path.join(d, "checkpoints"))  # being pruned after DONE: never linked
        open(os.path.join(d, runner.DONE), "w").close()
        open(os.path.join(d, runner.METRICS), "w").write("{}")
    linked = [t for t, s in pairs if s in finished]
    os.makedirs(runner.run_dir(dst_dir, linked[0]) + ".partial/stale")  # left by a failed earlier call
    out = tool.reuse(src, src_dir, dst, dst_dir, log=lambda s: None)
    assert out == {"linked": 3, "already_present": 0, "source_unfinished": 21, "target_runs": 36}
    assert all(runner.is_done(dst_dir, t) for t in linked)
    d = runner.run_dir(dst_dir, linked[0])
    assert sorted(os.listdir(d)) == [runner.DONE, runner.METRICS] and not os.path.exists(d + ".partial")
    assert os.stat(os.path.join(d, runner.METRICS)).st_nlink == 2  # hard links, no copy
    assert tool.reuse(src, src_dir, dst, dst_dir, log=lambda s: None)["already_present"] == 3


def test_lite0_head_study_reuses_the_imagenet_study_runs_with_the_hidden_head():
    """lite0_head_study's hidden-head arms are lite0_imagenet_study's 100%-data runs; the linear-head
    arms are new (24 runs)."""
    tool = _reuse_tool()
    src = plan_lib.load_plan(os.path.join(_REPO_RECIPES, "lite0_imagenet_study.yaml"))
    dst = plan_lib.load_plan(os.path.join(_REPO_RECIPES, "lite0_head_study.yaml"))
    pairs = tool.matches(src, dst)
    assert len(pairs) == 24 and {s.arm_id for _, s in pairs} == {"imagenet_1_data-b8c79cd7", "scratch_1_data-32fcd69e"}
    assert all(dst.arm(t.arm_id).recipe.model.head for t, _ in pairs)  # the hidden-head arms only


def test_lite0_source_study_reuses_every_imagenet_and_scratch_run():
    """lite0_source_study adds the other-survey init to lite0_imagenet_study: its 72 runs carry over,
    only the 36 sdss_lite0 runs are new."""
    tool = _reuse_tool()
    src = plan_lib.load_plan(os.path.join(_REPO_RECIPES, "lite0_imagenet_study.yaml"))
    dst = plan_lib.load_plan(os.path.join(_REPO_RECIPES, "lite0_source_study.yaml"))
    pairs = tool.matches(src, dst)
    assert len(pairs) == len(src.runs) == 72 and len(dst.runs) == 108
    assert {t.arm_id for t, _ in pairs} == {a.id for a in src.arms}
    assert all(dst.reference_of(a).values["init"] == "imagenet" for a in dst.arms if a.values["init"] != "imagenet")


# Run directories of committed studies (docs/evidence, recipes/*study*.yaml) are named by these ids:
# a change to how arms are named or overridden would orphan every finished run.
PINNED_ARM_IDS = {
    "lite0_imagenet_study.yaml": ["imagenet_0.05_data-d7d1aaf5", "imagenet_0.25_data-a55f2733", "imagenet_1_data-b8c79cd7",
                                  "scratch_0.05_data-13e39686", "scratch_0.25_data-3edd0055", "scratch_1_data-32fcd69e"],
    "lite0_reset_study.yaml": ["full_no_reinit-bd904370", "full_reinit_top-1f87363a", "full_reinit_block6-block7-top-f6fe70a2",
                               "cut_after_block6_no_reinit-58d72cbd", "cut_after_block5_no_reinit-d2e169da"],
    "lite0_freeze_study.yaml": ["head_only-1a62cada", "from_block6-d50b137f", "from_block4-1b190884", "all-f899a557"],
    "lite0_budget_study.yaml": ["scratch_x1_epochs-2eff7d44", "scratch_x3_epochs-45cebb39", "imagenet_x1_epochs-846c589e"],
    "lite0_bn_study.yaml": ["bn-frozen-0088486c", "bn-train-83040f0a"],
    "lite0_source_study.yaml": ["imagenet_0.05_data-d7d1aaf5", "imagenet_0.25_data-a55f2733", "imagenet_1_data-b8c79cd7",
                                "scratch_0.05_data-13e39686", "scratch_0.25_data-3edd0055", "scratch_1_data-32fcd69e",
                                "sdss_lite0_0.05_data-6a29b6fb", "sdss_lite0_0.25_data-014c1004", "sdss_lite0_1_data-885905fa"],
    "lite0_head_study.yaml": ["imagenet_head-units-256-activation-relu-dropout-9916e018", "imagenet_head-none-51a93619",
                              "scratch_head-units-256-activation-relu-dropout-0-4cf22b53", "scratch_head-none-3db77ceb"],
    "lite0_bands_study.yaml": ["imagenet_method-percentile-160e746a", "imagenet_method-none-c8004d32",
                               "scratch_method-percentile-7970e7c5"],
    "study_smoke.yaml": ["head_only-1a62cada", "all-f899a557"],
    "survey_budget_study.yaml": ["scratch_x1_epochs-0ba3beb7", "scratch_x3_epochs-3a119851",
                                 "sdss_pretrained_x1_epochs-d505e9d0", "sdss_pretrained_x3_epochs-d5e65119"],
    "survey_transfer_study.yaml": ["scratch_0.1_data-2072cf43", "scratch_1_data-40a2ec21",
                                   "sdss_pretrained_0.1_data-27ac90b6", "sdss_pretrained_1_data-72738f04"],
}


@pytest.mark.parametrize("name", sorted(PINNED_ARM_IDS))
def test_repo_study_arm_ids_are_pinned(name):
    plan = plan_lib.load_plan(os.path.join(_REPO_RECIPES, name))
    assert [a.id for a in plan.arms] == PINNED_ARM_IDS[name]


def test_telescope_study_arm_ids_are_pinned():
    telescope = plan_lib.load_plan(os.path.join(_REPO_RECIPES, "telescope_study.yaml"))
    ids = [a.id for a in telescope.arms]
    assert len(ids) == 36 and ids[0] == "imagenet_head_only_0.05_data-d87627d6" and ids[-1] == "other_survey_all_1_data-cd9640b9"


def test_study_overrides_read_numbers_as_recipes_do(tmp_path):
    """--set study.lr_grid=[1e-4] used to give the string '1e-4' (PyYAML's YAML 1.1), refused as not a rate."""
    path = write_study(tmp_path, "init: [none]\nfreeze: [head_only, all]\n")
    plan = plan_lib.load_plan(path, ["study.lr_grid=[1e-4, 3e-5]", "study.seeds=1"])
    assert plan.study.lr_grid == (1e-4, 3e-5) and all(isinstance(x, float) for x in plan.study.lr_grid)
    assert sorted(r.recipe.train.phases[1].lr for r in plan.runs) == [3e-5, 3e-5, 1e-4, 1e-4]
    with pytest.raises(UserError, match=r"study.yaml: --set study.sedes: unknown key study.sedes \(did you mean seeds\?\)"):
        plan_lib.load_plan(path, ["study.sedes=2"])
    with pytest.raises(UserError, match=r"study.seeds: expected an integer"):
        plan_lib.load_plan(path, ["study.seeds=two"])


def test_vary_any_recipe_key(tmp_path):
    path = write_study(tmp_path, """
        init: [none, x.weights.h5]
        vary: {model.bn: [frozen, train]}
        seeds: 1
        baseline: {model.bn: frozen}
    """)
    plan = plan_lib.load_plan(path)
    assert plan.varied == ("init", "model.bn") and len(plan.arms) == 4
    assert [a.label for a in plan.arms] == ["scratch, bn=frozen", "scratch, bn=train", "file:x, bn=frozen", "file:x, bn=train"]
    assert plan.arms[0].id.startswith("scratch_bn-frozen-")
    for arm in plan.arms:
        assert arm.recipe.model.bn == arm.values["model.bn"]
        ref = plan.reference_of(arm)
        if arm.values["model.bn"] == "train":
            assert differing(arm.recipe, ref.recipe) == {"model.bn"}
    # The same axis through --set, and a key holding a list index.
    plan = plan_lib.load_plan(write_study(tmp_path, "init: [none]\n"),
                              ["study.vary.model.bn=[auto, train]", "study.vary.train.phases.1.lr=[0.01, 0.001]"])
    assert plan.study.axes["model.bn"] == ("auto", "train") and plan.study.axes["train.phases.1.lr"] == (0.01, 0.001)
    assert {(a.recipe.model.bn, a.recipe.train.phases[1].lr) for a in plan.arms} == {(b, lr) for b in ("auto", "train") for lr in (0.01, 0.001)}
    assert "bn=auto, lr=0.01" in [a.label for a in plan.arms]


@pytest.mark.parametrize("study, needle", [
    ("vary: {model.bnn: [frozen]}\n", "study.vary.model.bnn: --set model.bnn: unknown key model.bnn (did you mean bn?)"),
    ("vary: {model.bn: [frozn]}\n", "study.vary.model.bn: model.bn: expected one of auto, frozen, train; got 'frozn' (did you mean frozen?)"),
    ("vary: {model.bn: frozen}\n", "study.vary.model.bn: expected a non-empty list"),
    ("vary: {seed: [1, 2]}\n", "study.vary.seed: seed cannot be a study axis"),
    ("init: [none]\nvary: {model.weights: [none]}\n", "study.vary.model.weights: sets model.weights, which study.init sets too"),
    ("vary: {model.bn: [frozen, train]}\nbaseline: {model.bm: frozen}\n", "study.baseline.model.bm: not an axis of this study (did you mean model.bn?)"),
])
def test_vary_errors_are_one_line(tmp_path, study, needle):
    with pytest.raises(UserError) as e:
        plan_lib.load_plan(write_study(tmp_path, study))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_dry_run_warns_of_a_head_only_phase_before_training_a_random_backbone(tmp_path):
    """From random weights a head-only first phase can leave the model at chance (README Evidence):
    the plan names each arm that does it, and only those."""
    path = write_study(tmp_path, "arms:\n  - {init: none, train.phases.0.trainable: head}\n"
                                 "  - {init: none, train.phases.0.trainable: all}\nseeds: 2\n")
    r = _cli("--recipe", path, "--dry_run", "--workdir", str(tmp_path / "wd"))
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stdout.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "train.phases.0 (warmup) trains only the head on a random, frozen backbone" in warnings[0], r.stdout


def test_head_first_on_random_backbone_only_flags_the_trap():
    def recipe(weights, *trainables):
        phases = ",".join(f"{{name: p{i}, trainable: {t}, epochs: 1, lr: 1.0e-3}}" for i, t in enumerate(trainables))
        return recipe_lib.loads(BASE.replace("weights: none", f"weights: {weights}").split("train:")[0]
                                + f"train:\n  phases: [{phases}]\n")

    assert "train.phases.0 (p0)" in recipe_lib.head_first_on_random_backbone(recipe("none", "head", "all"))
    assert "train.phases.1 (p1)" in recipe_lib.head_first_on_random_backbone(recipe("none", "all", "head", "[conv5, head]"))
    assert recipe_lib.head_first_on_random_backbone(recipe("imagenet", "head", "all")) is None  # pretrained: the usual warmup
    assert recipe_lib.head_first_on_random_backbone(recipe("none", "all", "all")) is None
    assert recipe_lib.head_first_on_random_backbone(recipe("none", "head")) is None  # a probe of random features, on purpose


def test_an_init_carries_its_own_recipe_keys(tmp_path):
    """{label, weights, set}: what goes with an init (scratch trains every layer from the first phase),
    named by label in the baseline; a key another axis sets, or a reserved one, is refused."""
    scratch = "{label: scratch, weights: none, set: {train.phases.0.trainable: all}}"
    plan = plan_lib.load_plan(write_study(tmp_path, f"init: [imagenet, {scratch}]\nfreeze: [head_only, all]\n"
                                                    "seeds: 2\nbaseline: {init: scratch}\n"))
    assert len(plan.arms) == 4
    for arm in plan.arms:
        first = arm.recipe.train.phases[0].trainable
        assert first == ("all" if arm.values["init"] != "imagenet" else "head"), (arm.id, first)
        assert arm.recipe.model.weights == ("imagenet" if arm.values["init"] == "imagenet" else "none")
        assert recipe_lib.head_first_on_random_backbone(arm.recipe) is None
    refs = {a.id: plan.reference_of(a) for a in plan.arms}
    assert all((refs[a.id] is not None) == (a.values["init"] == "imagenet") for a in plan.arms)
    with pytest.raises(UserError, match=r"study.freeze: sets train.phases.1.trainable, which study.init sets too"):
        plan_lib.load_plan(write_study(tmp_path, "init: [imagenet, {label: s, weights: none, set: {train.phases.1.trainable: all}}]\n"
                                                 "freeze: [head_only, all]\n"))
    with pytest.raises(UserError, match="data.split_seed cannot be set per init"):
        plan_lib.load_plan(write_study(tmp_path, "init: [imagenet, {label: s, weights: none, set: {data.split_seed: 3}}]\n"))
    with pytest.raises(UserError, match="set: expected a mapping of dotted recipe keys"):
        plan_lib.load_plan(write_study(tmp_path, "init: [imagenet, {label: s, weights: none, set: [a]}]\n"))
