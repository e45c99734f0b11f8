"""Study report from fake results: every section, plots, numbers equal to study.json; end to end."""

import base64
import html
import json
import os
import re

import numpy as np
import pytest

from keras_tl.study import plan as plan_lib
from keras_tl.study import report, runner, stats

BASE = """
name: base
data: {source: synthetic_galaxies, synthetic: {count: 1000}, image_size: [32, 32], val_fraction: 0.1, test_fraction: 0.1}
model: {backbone: resnet50, weights: none}
train:
  phases:
    - {trainable: head, epochs: 1}
    - {trainable: all, epochs: 2}
"""
STUDY = """
  init: [imagenet, none]
  freeze: [head_only, all]
  data_fraction: [0.1, 0.3, 1.0]
  seeds: 5
  baseline: {init: none}
"""
# True effect of imagenet over scratch by data fraction: large, smaller, gone (scratch catches up).
EFFECT = {0.1: 0.10, 0.3: 0.05, 1.0: -0.02}


def make_plan(tmp_path, study=STUDY):
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "study.yaml").write_text("extends: base.yaml\nname: fake_study\nstudy:" + study)
    return plan_lib.load_plan(str(tmp_path / "study.yaml"))


def fake_results(plan, skip=()):
    rng = np.random.default_rng(0)
    luck = rng.normal(0, 0.02, plan.study.seeds)
    out = {}
    for run in plan.runs:
        if run.key in skip:
            continue
        v = plan.arm(run.arm_id).values
        acc = 0.6 + 0.15 * v["data_fraction"] + (0.03 if v["freeze"] == "all" else 0.0) + luck[run.seed]
        if v["init"] == "imagenet":
            acc += EFFECT[v["data_fraction"]]
        acc += rng.normal(0, 0.005)
        out[run.key] = {"test": {"accuracy": acc, "loss": 1 - acc}, "val": {"accuracy": acc - 0.01, "loss": 1.0},
                        "history": {"accuracy": [acc - 0.2, acc - 0.1, acc], "val_accuracy": [acc - 0.25, acc - 0.1, acc - 0.01]},
                        "images_seen": 100 * v["data_fraction"], "wall_time": 2.0}
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    plan = make_plan(tmp)
    (tmp / "wd").mkdir()
    (tmp / "wd" / "probe.json").write_text(json.dumps({"stages": {"conv4": {"linear_probe_accuracy": 0.71}}, "cka": {"conv5": 0.42}}))
    study = report.analyze(plan, fake_results(plan), probe=report.load_probe(str(tmp / "wd")))
    paths = report.write_report(study, str(tmp / "wd"))
    return plan, study, paths


def test_statistics_find_the_planted_effects(built):
    plan, study, _ = built
    by = {(c["values"]["freeze"], c["values"]["data_fraction"]): c for c in study["comparisons"]}
    assert len(by) == 6
    for freeze in ("head_only", "all"):
        assert by[(freeze, 0.1)]["verdict"] == stats.BETTER
        assert by[(freeze, 0.1)]["ci_lo"] < 0.10 < by[(freeze, 0.1)]["ci_hi"]
        assert by[(freeze, 0.1)]["a"] == "imagenet" and by[(freeze, 0.1)]["b"] == "scratch"
    cross = study["crossovers"]
    assert len(cross) == 2
    for x in cross:
        # Planted: +5 points at 0.3, -2 at 1.0 → crossing near 10**(log10(0.3) + 5/7 * log10(1/0.3)).
        assert x["fraction"] == pytest.approx(10 ** (np.log10(0.3) + 5 / 7 * np.log10(1 / 0.3)), rel=0.15)
        assert x["fraction_lo"] <= x["fraction"] <= (x["fraction_hi"] or 1.0)
        assert x["images"] == pytest.approx(x["fraction"] * 800, abs=1)
    assert f"the gap closes at ~{cross[0]['fraction'] * 100:.3g}% of the data" in study["verdict"]
    arm = study["arms"][0]
    assert arm["images_seen"]["mean"] > 0 and arm["wall_time"]["total"] == pytest.approx(10.0)
    assert study["runs_done"] == study["runs_total"] == 60


def test_report_has_every_section(built):
    _, study, paths = built
    page = open(paths["html"]).read()
    first_p = re.search(r"<p[^>]*>(.*?)</p>", page, re.S)
    assert "id='verdict'" in first_p.group(0)
    assert html.unescape(first_p.group(1)) == study["verdict"]
    for key in report.PLOTS:
        m = re.search(rf"<img id='plot-{key}'[^>]*src='data:image/png;base64,([^']+)'", page)
        assert m, key
        assert base64.b64decode(m.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    for title in ("Arms", "Comparisons against the baseline", "Where the gap closes along data size", "Probes and CKA", "Methods"):
        assert f"<h2>{html.escape(title)}" in page
    assert "linear_probe_accuracy" in page
    assert not re.search(r"(src|href)=['\"]https?:", page)  # self-contained
    md = open(paths["md"]).read()
    assert md.splitlines()[2] == study["verdict"]
    for key in report.PLOTS:
        assert f"(plots/{key}.png)" in md
        assert os.path.getsize(os.path.join(os.path.dirname(paths["md"]), "plots", f"{key}.png")) > 1000


def test_numbers_in_report_match_study_json(built):
    _, study, paths = built
    saved = json.load(open(paths["json"]))
    assert saved["comparisons"] == json.loads(json.dumps(study["comparisons"]))
    page = html.unescape(open(paths["html"]).read())
    md = open(paths["md"]).read()
    for c in saved["comparisons"]:
        diff = f"{c['mean'] * 100:+.1f}"
        ci = f"{c['ci_lo'] * 100:+.1f} to {c['ci_hi'] * 100:+.1f}"
        row = re.search(rf"<td>{re.escape(c['context'])}</td><td>{c['n']}</td><td>([^<]*)</td><td>([^<]*)</td>", page)
        assert row and row.group(1) == diff and row.group(2) == ci
        assert f"| {c['context']} | {c['n']} | {diff} | {ci} |" in md
    for a in saved["arms"]:
        assert f"<td>{a['label']}</td><td>5</td><td>{a['mean'] * 100:.1f}</td>" in page
    # The verdict paragraph quotes the comparison numbers exactly.
    best = max((c for c in saved["comparisons"] if c["verdict"] == "better"), key=lambda c: c["mean"])
    assert f"by {best['mean'] * 100:+.1f} points (95% CI {best['ci_lo'] * 100:+.1f} to {best['ci_hi'] * 100:+.1f}, " \
           f"P(better)={best['p_better']:.2f}, 5 seeds)" in saved["verdict"]


def test_small_study_verdict_lists_each_comparison_and_aa_is_no_evidence(tmp_path):
    plan = make_plan(tmp_path, "\n  init: [imagenet, none]\n  seeds: 5\n  baseline: {init: none}\n")
    results = {}
    rng = np.random.default_rng(1)
    for run in plan.runs:  # A/A: both arms draw from the same distribution
        results[run.key] = {"test": {"accuracy": 0.7 + rng.normal(0, 0.02)}, "val": {}, "history": {}}
    study = report.analyze(plan, results)
    (c,) = study["comparisons"]
    assert c["verdict"] == stats.NO_EVIDENCE
    assert study["verdict"].startswith("On test accuracy: imagenet vs scratch: no evidence of a difference at this budget")
    paths = report.write_report(study, str(tmp_path / "out"))
    page = open(paths["html"]).read()
    assert "Not applicable: the study does not vary data_fraction" in page
    assert "Probes and CKA" not in page


def test_partial_results_are_labelled(tmp_path):
    plan = make_plan(tmp_path)
    skip = {r.key for r in plan.runs if r.seed == 4}
    study = report.analyze(plan, fake_results(plan, skip))
    assert study["verdict"].startswith("PARTIAL RESULTS (48 of 60 runs finished).")
    assert all(c["n"] == 4 for c in study["comparisons"])
    # What the finished runs cost, every learning rate and arm counted (fake runs: 2 s of training each).
    assert study["compute"]["runs"] == 48 and study["compute"]["train_time_s"] == pytest.approx(96.0)
    assert set(study["compute"]["median_run_s"].values()) == {2.0}
    paths = report.write_report(study, str(tmp_path / "wd"))
    text = open(paths["md"], encoding="utf-8").read()
    assert "Compute: 48 finished runs, 0.0 h of training" in text


def test_lr_grid_picks_on_validation(tmp_path):
    plan = make_plan(tmp_path, "\n  init: [imagenet, none]\n  seeds: 2\n  lr_grid: [0.01, 0.001]\n")
    results = {}
    for run in plan.runs:
        good = run.lr == 0.001
        # Validation prefers lr 0.001; test would prefer 0.01 — the pick must use validation.
        results[run.key] = {"test": {"accuracy": 0.5 if good else 0.9}, "val": {"accuracy": 0.8 if good else 0.6}, "history": {}}
    study = report.analyze(plan, results)
    for a in study["arms"]:
        assert a["lr_picked"] == 0.001 and a["mean"] == pytest.approx(0.5)


E2E_BASE = """
name: e2e
data: {source: synthetic_galaxies, synthetic: {count: 60}, image_size: [32, 32], batch_size: 16, val_fraction: 0.2, test_fraction: 0.2}
model: {backbone: mobilenetv3small, weights: none, cut_after: block2, head: [{units: 16}]}
train:
  tensorboard: false
  phases:
    - {name: warmup, trainable: head, epochs: 1}
    - {name: finetune, trainable: all, epochs: 1}
export: {savedmodel: false, keras: false, backbone_weights: false, verify: false}
"""


def test_end_to_end_study_with_real_training(tmp_path):
    """2 arms × 2 seeds through keras_tl.train.run on a tiny model, then the report (like study_smoke.yaml, smaller)."""
    (tmp_path / "base.yaml").write_text(E2E_BASE)
    (tmp_path / "study.yaml").write_text("extends: base.yaml\nname: e2e_study\nstudy: {freeze: [head_only, all], seeds: 2}\n")
    plan = plan_lib.load_plan(str(tmp_path / "study.yaml"))
    wd = str(tmp_path / "study")
    res = runner.run_plan(plan, wd, log=lambda s: None)
    assert len(res.ran) == 4
    for run in plan.runs:
        m = runner.load_metrics(wd, run)
        assert m["seed"] == run.seed and 0.0 <= m["test"]["accuracy"] <= 1.0
    paths = report.build_report(plan, wd)
    study = json.load(open(paths["json"]))
    assert study["runs_done"] == 4 and study["split"] == "test"
    (c,) = study["comparisons"]
    assert c["n"] == 2 and c["a"] == "freeze all" and c["b"] == "freeze head_only"
    assert all(a["history"] for a in study["arms"])
    # Every section of the report is there, the verdict first, the plots inline.
    page = open(paths["html"], encoding="utf-8").read()
    assert page.index("class='verdict'") < page.index("<h2>Arms</h2>") if "class='verdict'" in page else page.index('class="verdict"') < page.index("<h2>Arms</h2>")
    for title in ["Arms", "Comparisons against the baseline", "Methods", *report.PLOT_TITLES.values()]:
        assert f"<h2>{html.escape(title)}</h2>" in page, title
    # Freeze depth, training curves, forest plot; metric-vs-data-size needs a data_fraction axis.
    assert page.count("src='data:image/png;base64,") + page.count('src="data:image/png;base64,') >= len(report.PLOTS) - 1
    md = open(paths["md"], encoding="utf-8").read()
    assert study["verdict"] in md[: len(study["verdict"]) + 300]


def test_loss_metric_lower_is_better_and_keeps_precision(tmp_path):
    plan = make_plan(tmp_path, "\n  init: [imagenet, none]\n  seeds: 5\n  baseline: {init: none}\n  metric: loss\n")
    results = {}
    for run in plan.runs:
        v = plan.arm(run.arm_id).values
        jitter = 0.002 * ((run.seed * 7 + (3 if v["init"] == "imagenet" else 0)) % 5) / 4
        loss = 0.5 + 0.01 * run.seed + (-0.0312 if v["init"] == "imagenet" else 0.0) + jitter
        results[run.key] = {"test": {"accuracy": 0.5, "loss": loss}, "val": {}, "history": {}}
    study = report.analyze(plan, results)
    (c,) = study["comparisons"]
    assert study["higher_is_better"] is False and c["verdict"] == stats.BETTER
    assert f"imagenet beats scratch by {c['mean']:+.3g} (95% CI" in study["verdict"] and -0.034 < c["mean"] < -0.029


def test_missing_metric_names_the_run_by_its_plan_key(tmp_path):
    """The key comes from the plan, learning-rate index included (report.py once rebuilt it without)."""
    plan = make_plan(tmp_path, "\n  init: [imagenet, none]\n  seeds: 2\n  lr_grid: [1.0e-3, 1.0e-4]\n")
    results = {r.key: {"val": {"accuracy": 0.8 if r.lr_index == 1 else 0.5}, "test": {"accuracy": 0.7}, "history": {}}
               for r in plan.runs}
    picked = next(r for r in plan.runs if r.lr_index == 1 and r.seed == 1)
    results[picked.key] = {"val": {"accuracy": 0.8}, "test": {"loss": 0.3}, "history": {}}
    with pytest.raises(report.UserError, match=f"run {picked.key}'s test metrics"):
        report.analyze(plan, results)
    assert "/lr1/" in picked.key


def _acc(acc, n=40, classes=10):
    """A metrics block as train writes it: accuracy with per-class supports (balanced test split of n)."""
    return {"accuracy": acc, "examples": n, "per_class": {f"c{i}": {"support": n // classes} for i in range(classes)}}


def test_both_arms_at_chance_say_so_instead_of_asking_for_more_seeds(tmp_path):
    """The smoke study's case: 10 classes, both arms at 7.5-10% on 40 test images."""
    plan = make_plan(tmp_path, "\n  init: [imagenet, none]\n  seeds: 4\n  baseline: {init: none}\n")
    accs = {"imagenet": [0.075, 0.1, 0.125, 0.075], "none": [0.1, 0.1, 0.05, 0.1]}
    results = {r.key: {"test": _acc(accs[plan.arm(r.arm_id).values["init"]][r.seed]), "val": {}, "history": {}} for r in plan.runs}
    study = report.analyze(plan, results)
    (c,) = study["comparisons"]
    assert c["verdict"] == stats.BOTH_AT_CHANCE and c["seeds_needed"] is None
    for a in study["arms"]:
        assert a["chance"] == pytest.approx(0.1) and a["status"] == "at chance" and a["examples"] == 40
    v = study["verdict"]
    assert "both arms at chance in all 4 seeds" in v and "says nothing about the question" in v
    assert "more seeds would not change that" in v and "seeds would resolve it" not in v
    assert "Chance (majority-class rate of the 40-example test split) is 10.0%" in v
    assert "At chance in every seed: imagenet, scratch." in v
    paths = report.write_report(study, str(tmp_path / "out"))
    md = open(paths["md"]).read()
    assert "| chance (%) | seeds at chance (n) |" in md and "| 10.0 | all |" in md
    assert "| both arms at chance |" in md


def test_one_arm_at_chance_keeps_its_verdict_and_is_flagged(tmp_path):
    plan = make_plan(tmp_path, "\n  init: [imagenet, none]\n  seeds: 5\n  baseline: {init: none}\n")
    rng = np.random.default_rng(3)
    results = {}
    for r in plan.runs:
        learned = plan.arm(r.arm_id).values["init"] == "imagenet"
        acc = 0.6 + rng.normal(0, 0.02) if learned else 0.1
        results[r.key] = {"test": _acc(acc, n=400), "val": {}, "history": {}}
    study = report.analyze(plan, results)
    (c,) = study["comparisons"]
    assert c["verdict"] == stats.BETTER and c["at_chance"] == {"a": False, "b": True}
    assert "; scratch at chance)" in study["verdict"]
    # BASE trains only the head first: for the arm from random weights the report names it as the likely cause.
    assert ("A likely cause for scratch: train.phases.0 trains only the head on a random, frozen backbone"
            in study["verdict"]), study["verdict"]
    assert study["verdict"].count("A likely cause") == 1


def test_collapsed_seeds_are_reported_apart_with_the_learning_rate_as_cause(tmp_path):
    """Survey-like: at lr 1e-3 two of five imagenet seeds collapse; at 1e-4 none does, but val picks 1e-3."""
    plan = make_plan(tmp_path, "\n  init: [imagenet, none]\n  seeds: 5\n  lr_grid: [1.0e-3, 1.0e-4]\n  baseline: {init: none}\n")
    rng = np.random.default_rng(4)
    results = {}
    for r in plan.runs:
        init = plan.arm(r.arm_id).values["init"]
        collapsed = init == "imagenet" and r.lr_index == 0 and r.seed in (1, 3)
        acc = 0.1 if collapsed else (0.8 if (init == "imagenet" and r.lr_index == 0) else 0.5) + rng.normal(0, 0.02)
        val = 0.9 if (init == "imagenet" and r.lr_index == 0 and not collapsed) else (0.1 if collapsed else 0.4)
        results[r.key] = {"test": _acc(acc, n=400), "val": {"accuracy": val if r.lr_index == 0 or init != "imagenet" else 0.45}, "history": {}}
    study = report.analyze(plan, results)
    arm = next(a for a in study["arms"] if a["values"]["init"] == "imagenet")
    assert arm["lr_picked"] == 0.001 and arm["at_chance_seeds"] == [1, 3] and arm["status"] == "collapsed seeds"
    assert arm["learned"]["n"] == 3 and arm["learned"]["mean"] == pytest.approx(0.8, abs=0.03)
    assert report.collapse_cause(arm) == ("no seed of this arm collapsed at learning rate 0.0001 (5 seeds), "
                                          "so the learning rate 0.001 is the likely cause")
    v = study["verdict"]
    assert "Collapsed seeds: imagenet has 2 of 5 seeds at chance (seed 1, 3)" in v
    assert "the learning rate 0.001 is the likely cause" in v and "covered the truth 67% of the time at 5 seeds" in v
    (c,) = study["comparisons"]
    assert c["collapsed"] == {"a": [1, 3], "b": []}
    assert "2 collapsed seeds in imagenet" in report.comparison_clause(study, c)


def test_arm_intervals_stay_within_0_and_100(tmp_path):
    """The survey report's Arms table showed -24.3 to 39.3 for an arm of two seeds far apart."""
    plan = make_plan(tmp_path, "\n  init: [imagenet, none]\n  seeds: 2\n  baseline: {init: none}\n")
    accs = {"imagenet": [0.075, 0.55], "none": [0.97, 0.995]}
    results = {r.key: {"test": _acc(accs[plan.arm(r.arm_id).values["init"]][r.seed], n=200),
                       "val": {}, "history": {"accuracy": [0.01, 0.02], "val_accuracy": [0.99, 0.999]}} for r in plan.runs}
    study = report.analyze(plan, results)
    for a in study["arms"]:
        assert 0.0 <= a["lo"] <= a["mean"] <= a["hi"] <= 1.0
        for band in a["history"].values():
            assert all(0.0 <= p["lo"] <= p["hi"] <= 1.0 for p in band)
    (c,) = study["comparisons"]
    assert -1.0 <= c["ci_lo"] <= c["mean"] <= c["ci_hi"] <= 1.0 and c["t_lo"] < -1.0  # the raw t end was below -100 points
    scratch = next(a for a in study["arms"] if a["values"]["init"] == "none")
    assert scratch["hi"] < 1.0  # the logit side keeps the upper end inside, not clipped to 100


def test_freeze_plot_is_points_with_error_bars_and_curves_mark_phases(tmp_path, monkeypatch):
    """Categorical freeze depth: errorbar containers, no filled band; training curves: a vline per later phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = make_plan(tmp_path, "\n  freeze: [head_only, all]\n  seeds: 3\n")
    results = {r.key: {"test": _acc(0.5 + 0.01 * r.seed, n=200), "val": {}, "phase_epochs": [2, 3],
                       "history": {"accuracy": [0.2, 0.3, 0.4, 0.5, 0.6], "val_accuracy": [0.2, 0.3, 0.4, 0.5, 0.55]}} for r in plan.runs}
    study = report.analyze(plan, results)
    assert all(a["phase_starts"] == [3] for a in study["arms"])
    figs = []
    monkeypatch.setattr(report, "_fig_png", lambda fig: figs.append(fig) or b"png")
    plots = report.make_plots(study)
    assert set(plots) == {"freeze_depth", "training_curves", "forest"}
    freeze_ax = figs[0].axes[0]
    assert len(freeze_ax.containers) == 1 and not freeze_ax.collections[1:]  # one errorbar group, no fill_between
    assert freeze_ax.get_legend() is None or "fake_study" not in [t.get_text() for t in freeze_ax.get_legend().get_texts()]
    curves = figs[1]
    assert curves.axes[0].get_ylabel() == "accuracy (%)"
    assert [ln.get_xdata()[0] for ln in curves.axes[0].lines if ln.get_linestyle() == ":"] == [2.5]
    for f in figs:
        plt.close(f)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--force-device-scale-factor=1", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
# Injected into a copy of the page: records errors (script, resource) and, once loaded, every image's
# decoded size and every section's position, into a <pre> that --dump-dom prints.
PROBE_HEAD = ("<script>window.__errs=[];window.addEventListener('error',function(e){__errs.push(String(e.message||"
              "(e.target&&e.target.src||'').slice(0,80)||'resource'))},true);var __ce=console.error;"
              "console.error=function(){__errs.push('console.error: '+[].join.call(arguments,' '));__ce.apply(console,arguments)};</script>")
PROBE_TAIL = ("<script>window.addEventListener('load',function(){var r={errors:__errs,height:document.documentElement.scrollHeight,"
              "images:[].map.call(document.images,function(i){var b=i.getBoundingClientRect();return {id:i.id,ok:i.complete&&i.naturalWidth>0,"
              "top:b.top+scrollY,bottom:b.bottom+scrollY,left:b.left,right:b.right}}),"
              "sections:[].map.call(document.querySelectorAll('h1,h2'),function(h){return {title:h.textContent,top:h.getBoundingClientRect().top+scrollY}})};"
              "var p=document.createElement('pre');p.id='__probe';p.textContent=JSON.stringify(r);document.body.appendChild(p)});</script>")


def _chromium():
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed: .ci/run installs the Debian package (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (CI installs it; locally: apt-get install -y chromium)")
    return exe


def _run_chromium(exe, tmp_path, name, args):
    import subprocess

    profile = tmp_path / f"profile_{name}"  # a fresh profile per run: nothing cached from another
    proc = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_report_renders_in_headless_chromium(built, tmp_path):
    """report.html in a real browser: every image decodes, no console error, and the screenshot is not blank where sections are."""
    from PIL import Image

    exe = _chromium()
    _, study, paths = built
    page = open(paths["html"], encoding="utf-8").read()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>", 1), encoding="utf-8")
    dom = _run_chromium(exe, tmp_path, "probe", ["--window-size=1200,900", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]).stdout
    m = re.search(r"<pre id=\"__probe\">(.*?)</pre>", dom, re.S)
    assert m, dom[-500:]
    info = json.loads(html.unescape(m.group(1)))
    assert info["errors"] == []
    assert len(info["images"]) == len(report.PLOTS) and all(i["ok"] for i in info["images"]), info["images"]
    titles = [s["title"] for s in info["sections"]]
    assert "Arms" in titles and "Methods" in titles

    height = int(info["height"])
    shot = tmp_path / "shot.png"
    run = _run_chromium(exe, tmp_path, "shot", [f"--window-size=1200,{height}", f"--screenshot={shot}", "--virtual-time-budget=5000",
                                                 "file://" + paths["html"]])
    assert ":CONSOLE" not in run.stderr, [ln for ln in run.stderr.splitlines() if ":CONSOLE" in ln]
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.uint8)
    assert img.shape[0] >= height - 5 and img.shape[1] == 1200
    inked_rows = (img < 235).any(axis=1)
    tops = [int(s["top"]) for s in info["sections"]] + [height]
    for s, top, bottom in zip(info["sections"], tops, tops[1:]):
        share = inked_rows[top:bottom].mean() if bottom > top else 0.0
        assert share > 0.3, (s["title"], top, bottom, share)  # text or a plot on most lines of every section
    for i in info["images"]:
        crop = img[int(i["top"]):int(i["bottom"]), int(i["left"]):int(i["right"])]
        assert crop.size and (crop < 200).mean() > 0.01, i["id"]  # a drawn plot, not an empty box


def test_many_comparisons_count_those_at_chance(tmp_path):
    plan = make_plan(tmp_path)  # 6 comparisons
    results = {r.key: {"test": _acc(0.1 if plan.arm(r.arm_id).values["data_fraction"] < 1 else 0.5 + 0.01 * r.seed, n=400),
                       "val": {}, "history": {}} for r in plan.runs}
    study = report.analyze(plan, results)
    assert sum(c["verdict"] == stats.BOTH_AT_CHANCE for c in study["comparisons"]) == 4
    assert "4 compare two arms that are both at chance and say nothing about the question" in study["verdict"]


def test_phase_starts_come_from_run_json(tmp_path):
    plan = make_plan(tmp_path, "\n  init: [imagenet, none]\n  seeds: 2\n")
    wd = tmp_path / "wd"
    results = {}
    for r in plan.runs:
        d = wd / "runs" / r.key
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"phases": [{"epochs_run": 2}, {"epochs_run": 4}, {"epochs_run": 1}]}))
        results[r.key] = {"test": _acc(0.5), "val": {}, "history": {"accuracy": [0.1] * 7}}
    report._add_phase_epochs(plan, str(wd), results)
    study = report.analyze(plan, results)
    assert all(a["phase_starts"] == [3, 7] for a in study["arms"])
