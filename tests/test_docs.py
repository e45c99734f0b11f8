"""Figures in the README that a command prints must be what the command prints (issue 17: the
per-stage table for telescope.yaml had drifted from the code)."""

import json
import os
import re

from keras_tl import recipe as recipe_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE_DOC = os.path.join("docs", "studies_at_scale.md")


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


def _block(after: str, lang: str, path: str = "README.md") -> str:
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    m = re.search(rf"```{lang}\n(.*?)```", text[text.index(after):], re.S)
    assert m, (after, lang)
    return m.group(1)


def test_readme_kubernetes_job_and_sbatch_array_run_every_shard():
    """docs/studies_at_scale.md's Indexed Job and sbatch array are valid as written: each index gets its own shard of
    the study (N = completions = array length), and the command parses as keras_tl.study's."""
    import yaml

    from keras_tl.study import __main__ as study_cli
    from keras_tl.study import runner

    job = yaml.safe_load(_block("Scheduler arrays", "yaml", SCALE_DOC))
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["podReplacementPolicy"] == "Failed"  # one attempt per index at a time
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # backoffLimitPerIndex needs it
    (container,) = spec["template"]["spec"]["containers"]
    command = [str(c) for c in container["command"]]
    assert command[:3] == ["python", "-m", "keras_tl.study"]
    args = study_cli.parser().parse_args(command[3:])
    assert args.resume and os.path.exists(os.path.join(ROOT, args.recipe))
    n = spec["completions"]
    shards = [runner.resolve_shard(args.shard, {"JOB_COMPLETION_INDEX": str(i)}) for i in range(n)]
    assert [tuple(s) for s in shards] == [(i, n) for i in range(n)]
    assert any(args.workdir.startswith(m["mountPath"]) for m in container["volumeMounts"])  # the shared volume

    sbatch = _block("Scheduler arrays", "bash", SCALE_DOC)
    array = re.search(r"#SBATCH --array=(\d+)-(\d+)", sbatch)
    lo, hi = int(array.group(1)), int(array.group(2))
    cmd = re.search(r"python -m keras_tl.study (.*)", sbatch.replace("\\\n", " ")).group(1).split()
    args = study_cli.parser().parse_args(cmd)
    assert args.resume and os.path.exists(os.path.join(ROOT, args.recipe))
    env = {"SLURM_ARRAY_TASK_MIN": str(lo), "SLURM_ARRAY_TASK_COUNT": str(hi - lo + 1)}
    shards = [runner.resolve_shard(args.shard, {**env, "SLURM_ARRAY_TASK_ID": str(i)}) for i in range(lo, hi + 1)]
    assert [tuple(s) for s in shards] == [(i, hi - lo + 1) for i in range(hi - lo + 1)]


def _tool(name):
    """tools/<name>.py, loaded as a module (tools/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_readme_evidence_table_is_what_the_committed_studies_say():
    """The Evidence verdict table is tools/evidence_table.py's output on the committed study.json files
    named in its marker, so a number in it cannot drift from its study."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    tool = _tool("evidence_table")
    m = tool.MARKERS.search(text)
    assert m, "README.md has no <!-- evidence-table: DIR... --> block"
    want = tool.table([os.path.join(ROOT, d) for d in m.group(1).split()])
    assert m.group(2) == want, ("README.md's evidence table is stale; run `python tools/evidence_table.py "
                                f"--readme README.md` or replace it with:\n{want}")


def test_evidence_table_rewrites_only_the_marked_block(tmp_path):
    import shutil

    tool = _tool("evidence_table")
    shutil.copytree(os.path.join(ROOT, "docs", "evidence", "lite0_reset"), tmp_path / "ev" / "reset")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- evidence-table: ev/reset -->\n| stale |\n<!-- /evidence-table -->\noutro\n")
    tool.update_readme(str(readme))
    text = readme.read_text()
    assert text.startswith("intro\n<!-- evidence-table: ev/reset -->\n| study |") and text.endswith("<!-- /evidence-table -->\noutro\n")
    assert "| stale |" not in text and "reinit_top, full vs no_reinit, full" in text
    assert not (tmp_path / "README.md.tmp").exists()


def test_evidence_table_lists_a_carried_over_comparison_once():
    """lite0_source_study's ImageNet-vs-scratch runs are lite0_imagenet_study's (tools/reuse_runs.py):
    after lite0_imagenet those three rows are not repeated; its own sdss rows are kept, and alone it
    lists all six."""
    tool = _tool("evidence_table")
    ev = os.path.join(ROOT, "docs", "evidence")
    both = tool.table([os.path.join(ev, "lite0_imagenet"), os.path.join(ev, "lite0_source")]).splitlines()
    alone = tool.table([os.path.join(ev, "lite0_source")]).splitlines()
    assert sum(r.startswith("| lite0_source_study |") for r in alone) == 6
    source_rows = [r for r in both if r.startswith("| lite0_source_study |")]
    assert len(source_rows) == 3 and all("sdss_lite0 vs imagenet" in r for r in source_rows)
    assert sum(r.startswith("| lite0_imagenet_study |") for r in both) == 3


def test_every_committed_study_figure_is_in_its_committed_run_records():
    """Each docs/evidence study with records/ (tools/snapshot_study.py) commits every run it reports:
    the per-seed metric of every arm, at its picked rate, is that run's metrics.json. (Guards against
    .gitignore's ``runs/`` swallowing records/runs/, as it once did.)"""
    import glob

    studies = sorted(glob.glob(os.path.join(ROOT, "docs", "evidence", "*", "records", "plan.json")))
    assert len(studies) >= 10
    for plan_path in studies:
        out = os.path.dirname(os.path.dirname(plan_path))
        study = json.load(open(os.path.join(out, "study.json"), encoding="utf-8"))
        metric = study["metric"]
        for arm in study["arms"]:
            lr = "" if not study.get("lr_grid") else f"lr{study['lr_grid'].index(arm['lr_picked'])}"
            for seed, value in zip(arm["seeds"], arm["per_seed"]):
                path = os.path.join(out, "records", "runs", arm["id"], lr, f"seed{seed}", "metrics.json")
                assert os.path.isfile(path), f"{path}: not committed; check .gitignore and rerun tools/snapshot_study.py"
                got = json.load(open(path, encoding="utf-8"))[study["split"]][metric]
                assert abs(got - value) < 1e-12, (path, got, value)


def test_evidence_table_replaces_a_comparison_a_later_study_extended_with_seeds():
    """lite0_reset_cut_study carried lite0_reset_study's seeds 0-5 of the two cuts over and added 6-9:
    its 10-seed rows take the 6-seed rows' place; the reinit rows stay lite0_reset's."""
    tool = _tool("evidence_table")
    ev = os.path.join(ROOT, "docs", "evidence")
    both = [r for r in tool.table([os.path.join(ev, "lite0_reset"), os.path.join(ev, "lite0_reset_cut")]).splitlines()[2:]]
    assert [r.split(" | ")[0] for r in both] == ["| lite0_reset_study"] * 2 + ["| lite0_reset_cut_study"] * 2
    assert [r.split(" | ")[2] for r in both] == ["6", "6", "10", "10"]
    assert "cut_after_block6" in both[2] and "cut_after_block5" in both[3]


def test_evidence_table_carries_the_reports_chance_and_collapse_flags():
    """The table's verdict is the report's, flags included: lite0_budget25's scratch x1 had 3 of 6 seeds
    at chance while the others learned, which the report flags and the table must not drop."""
    tool = _tool("evidence_table")
    body = tool.table([os.path.join(ROOT, "docs", "evidence", "lite0_budget25")]).splitlines()[2:]
    assert body[0].endswith("| worse; 3 collapsed seeds in scratch, x1_epochs |"), body[0]
    assert body[1].endswith("| better |"), body[1]


def test_evidence_table_keeps_comparisons_of_different_runs_apart(tmp_path):
    """Same arms' overrides but different runs (another base recipe, say): both rows are listed; the
    same runs with the baseline the other way round are listed once."""
    tool = _tool("evidence_table")

    def study(path, name, a, b, diffs):
        arms = [{"id": i, "mean": 0.5} for i in (a, b)]
        comp = {"arm_id": a, "reference_id": b, "a": a, "b": b, "seeds": list(range(len(diffs))), "diffs": diffs,
                "n": len(diffs), "mean": sum(diffs) / len(diffs), "ci_lo": -0.1, "ci_hi": 0.1,
                "verdict": "no evidence at this budget", "at_chance": {"a": False, "b": False}}
        os.makedirs(path)
        with open(os.path.join(path, "study.json"), "w") as f:
            json.dump({"name": name, "runs_done": 1, "runs_total": 1, "arms": arms, "comparisons": [comp]}, f)
        return str(path)

    one = study(tmp_path / "one", "one", "x-aaaa", "y-bbbb", [0.1, 0.2])
    other = study(tmp_path / "other", "other", "x2-aaaa", "y2-bbbb", [0.1, 0.3])
    flipped = study(tmp_path / "flipped", "flipped", "y3-bbbb", "x3-aaaa", [-0.1, -0.2])
    body = tool.table([one, other, flipped]).splitlines()[2:]
    assert [r.split(" | ")[0] for r in body] == ["| one", "| other"]


def test_evidence_cost_counts_a_carried_over_run_once(tmp_path):
    import subprocess
    import sys

    tool = _tool("evidence_cost")

    def run(path, process, training):
        os.makedirs(path)
        with open(os.path.join(path, "run.json"), "w") as f:
            f.write('{"workdir": "%s", "wall_time_s": {"training": %s, "this_process": %s}}' % (path, training, process))

    a, b = tmp_path / "a", tmp_path / "b"
    run(str(a / "runs" / "x" / "seed0"), 3600, 3000)
    run(str(a / "runs" / "x" / "seed1"), 1800, 1500)
    os.makedirs(b / "runs" / "y" / "seed0")
    os.link(a / "runs" / "x" / "seed0" / "run.json", b / "runs" / "y" / "seed0" / "run.json")  # tools/reuse_runs.py
    run(str(b / "runs" / "y" / "seed1"), 720, 360)
    rows = tool.cost([str(a), str(b)])
    assert [(r["runs"], r["new"]) for r in rows] == [(2, 2), (2, 1)]
    assert rows[0]["process_h"] == 1.5 and rows[1]["process_h"] == 0.2 and rows[1]["training_h"] == 0.1
    assert tool.table([str(a), str(b)]).splitlines()[-1] == "| total | 4 | 3 | 1.70 | 1.35 |"
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "evidence_cost.py"), str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a directory" in bad.stderr


def test_compare_arms_reproduces_the_reports_own_comparison_and_names_unknown_arms(capsys):
    tool = _tool("compare_arms")
    path = os.path.join(ROOT, "docs", "evidence", "lite0_reset", "study.json")
    study = json.load(open(path, encoding="utf-8"))
    own = next(c for c in study["comparisons"] if c["arm_id"].startswith("full_reinit_top"))
    got = tool.compare(study, "full_reinit_top", "full_no_reinit")  # a baseline pair: must match the report exactly
    assert (got["mean"], got["ci_lo"], got["ci_hi"], got["n"]) == (own["mean"], own["ci_lo"], own["ci_hi"], own["n"])
    assert tool.main([path, "cut_after_block6", "cut_after_block5"]) == 0
    assert capsys.readouterr().out.startswith("cut_after_block6_no_reinit-58d72cbd vs cut_after_block5_no_reinit-d2e169da: ")
    assert tool.main([path, "full_", "full_no_reinit"]) == 2  # ambiguous prefix
    assert "more than one arm matches 'full_'" in capsys.readouterr().err
    assert tool.main([path + ".missing", "a", "b"]) == 2
