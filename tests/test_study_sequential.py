"""Adaptive seeds: boundaries against published values, exact error rates, determinism, outcomes, calibration."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as st

from keras_tl.errors import UserError
from keras_tl.study import sequential as sq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN = sq.Design(sq.schedule(3, 12))


def test_schedule_and_its_errors():
    assert sq.schedule(3, 12) == (3, 6, 9, 12)
    assert sq.schedule(5, 12) == (5, 7, 10, 12)
    assert sq.schedule(3, 12, step=4) == (3, 7, 11, 12)
    assert sq.schedule(4, 4) == (4,)
    with pytest.raises(UserError, match=r"study.seeds.min: 2 is too few"):
        sq.schedule(2, 12)
    with pytest.raises(UserError, match=r"study.seeds.max: 4 is below min 5"):
        sq.schedule(5, 4)
    with pytest.raises(UserError, match=r"study.seeds.step"):
        sq.schedule(3, 12, step=0)
    with pytest.raises(UserError, match=r"study.seeds.max: expected an integer"):
        sq.schedule(3, 12.5)


def test_spending_machinery_reproduces_published_normal_boundaries():
    # Known variance (z statistics), 4 equally spaced looks, Lan-DeMets O'Brien-Fleming, two-sided 0.05:
    # 4.333, 2.963, 2.359, 2.014 (gsDesign sfLDOF, test.type=2; Jennison & Turnbull 2000, Table 7.? family).
    looks = (3, 6, 9, 12)
    z = np.random.default_rng(1).standard_normal((1 << 17, 12))
    cs = np.cumsum(z, axis=1)
    abs_z = np.abs(np.stack([cs[:, n - 1] / math.sqrt(n) for n in looks], axis=1))
    inc = np.diff(np.concatenate([[0.0], sq.spent(0.05, np.asarray(looks) / 12)]))
    c = sq.boundaries_from_paths(abs_z, inc, st.norm.isf(inc[0] / 2))
    assert c == pytest.approx([4.333, 2.963, 2.359, 2.014], abs=0.03)
    assert sq.spent(0.05, 1.0) == pytest.approx(0.05)


def test_t_boundaries_keep_the_level_on_fresh_null_data():
    c = np.array(DESIGN.critical())
    assert c[0] == pytest.approx(st.t.isf(sq.spent(0.05, 0.25) / 2, 2))
    assert 2.2 < c[-1] < 2.4 and np.all(np.diff(c) < 0)
    x = np.random.default_rng(7).normal(0, 3, (100_000, 12))
    alive, crossed = np.ones(len(x), bool), 0
    for k, n in enumerate(DESIGN.looks):
        t = np.abs(x[:, :n].mean(1) / (x[:, :n].std(1, ddof=1) / math.sqrt(n)))
        hit = alive & (t > c[k])
        crossed += hit.sum()
        alive &= ~hit
    assert abs(crossed / len(x) - 0.05) < 0.003  # SE 0.0007


def test_same_results_same_decisions_and_resume_matches():
    rng = np.random.default_rng(3)
    diffs = {"a": rng.normal(3, 3, 12), "b": rng.normal(0, 3, 12), "c": rng.normal(-4, 3, 12)}
    full = sq.replay(DESIGN, diffs, margin=2.0)
    assert full.done and sq.replay(DESIGN, diffs, margin=2.0).to_json() == full.to_json()
    # An interrupted study has fewer seeds; replaying what it has asks for the next round, and once
    # those runs exist it ends exactly where the uninterrupted one did.
    part = sq.replay(DESIGN, {k: v[:7] for k, v in diffs.items()}, margin=2.0)
    assert not part.done and part.round == 2
    assert set(part.seeds_wanted()) == {k for k, tr in full.tracks.items() if tr.n > 6}
    assert all(n == 9 for n in part.seeds_wanted().values())
    grown = {k: v[:full.tracks[k].n] for k, v in diffs.items()}  # only the runs the study would have made
    assert sq.replay(DESIGN, grown, margin=2.0).to_json() == full.to_json()


def test_outcomes_better_worse_equivalent_out_of_seeds_out_of_budget():
    base = np.array([0.5, -0.4, 0.3, -0.2, 0.1, -0.3, 0.4, -0.5, 0.2, -0.1, 0.35, -0.25])
    res = sq.replay(DESIGN, {"up": base + 6, "down": base - 6, "same": base, "noisy": base * 30 + 1})
    st_ = {k: tr.status for k, tr in res.tracks.items()}
    assert st_ == {"up": sq.BETTER, "down": sq.WORSE, "same": sq.OUT_OF_SEEDS, "noisy": sq.OUT_OF_SEEDS}
    assert res.tracks["up"].n < 12 and res.tracks["same"].n == 12
    assert sq.replay(DESIGN, {"up": base + 6}, higher_is_better=False).tracks["up"].status == sq.WORSE
    eq = sq.replay(DESIGN, {"same": base, "noisy": base * 30 + 1}, margin=1.0).tracks
    assert eq["same"].status == sq.EQUIVALENT and eq["same"].n == 9 and -1 < eq["same"].eq_lo < eq["same"].eq_hi < 1
    # At 6 seeds the 1 - 0.05/2 RCI (two comparisons) still reaches past the 1-point margin.
    assert eq["same"].history[1]["mean"] - DESIGN.critical(0.025)[1] * eq["same"].history[1]["sd"] / math.sqrt(6) < -1
    assert eq["noisy"].status == sq.OUT_OF_SEEDS
    asked = []
    out = sq.replay(DESIGN, {"noisy": base * 30 + 1, "up": base + 6},
                    next_round_fits=lambda r, trs: asked.append((r, [k for k, t in trs.items() if not t.stopped])) or r < 1).tracks
    assert out["noisy"].status == sq.OUT_OF_BUDGET and out["noisy"].n == 6 and out["up"].status == sq.BETTER
    assert asked == [(0, ["noisy", "up"]), (1, ["noisy"])]
    with pytest.raises(UserError, match="study.margin"):
        sq.replay(DESIGN, {"x": base}, margin=0)


def test_zero_spread_decides_nothing():
    tr = sq.replay(DESIGN, {"x": [2.5] * 12}, margin=10.0).tracks["x"]
    assert tr.status == sq.OUT_OF_SEEDS and tr.ci_lo is None and tr.t_values == [None] * 4


def test_holm_over_sequential_tests():
    rng = np.random.default_rng(11)
    strong = rng.normal(0, 1, 12) + 5
    # t = 2.6 at 9 and at 12 seeds: past the level-0.05 boundary at 12 (2.31), short of level 0.05/6's (3.29).
    weak = np.array([1.9, 0.2, 2.5, 1.1, -0.4, 2.8, 0.9, 1.7, 2.2, -0.1, 1.5, 1.0]) - 0.5
    alone = sq.replay(DESIGN, {"weak": weak}).tracks["weak"]
    with_nulls = sq.replay(DESIGN, {"weak": weak, **{f"n{i}": rng.normal(0, 3, 12) for i in range(5)}}).tracks["weak"]
    assert alone.status == sq.BETTER and with_nulls.status != sq.BETTER  # 6 comparisons: level 0.05/6 first
    res = sq.replay(DESIGN, {"strong": strong, "weak": weak})
    assert res.tracks["strong"].status == sq.BETTER and res.tracks["strong"].n == 6
    res.add_p_values()
    p = res.tracks["strong"].p_seq
    assert sq.crosses(DESIGN, res.tracks["strong"].t_values, p * 1.02, cached=False)
    assert not sq.crosses(DESIGN, res.tracks["strong"].t_values, p / 1.05, cached=False)
    assert p < res.tracks["weak"].p_seq and res.tracks["strong"].p_holm == pytest.approx(min(1.0, 2 * p))


def test_calibration_tool_small_run(tmp_path):
    out = tmp_path / "cal.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "calibration.py"), "--reps", "40", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())["summary"]
    # Loose bounds: 40 replicates per scenario give Monte Carlo errors of 0.03-0.08.
    assert s["aa_false_claim_rate_fixed"] <= 0.2 and s["aa_false_claim_rate_adaptive"] <= 0.2
    assert 0.8 <= s["ci_coverage_fixed"] <= 1.0 and 0.8 <= s["ci_coverage_adaptive"] <= 1.0
    assert s["power_adaptive_3pt"] >= 0.55
    assert s["mean_seeds_adaptive"]["3"] < s["mean_seeds_adaptive"]["0"] <= 12
    assert s["aa_false_claim_rate_naive_peeking"] >= s["aa_false_claim_rate_adaptive"]


def test_budget_parsing_and_rule():
    from keras_tl.study import adaptive

    assert adaptive.parse_budget("40runs") == adaptive.Budget(runs=40)
    assert adaptive.parse_budget("40 runs") == adaptive.Budget(runs=40)
    assert adaptive.parse_budget("2.5h") == adaptive.Budget(hours=2.5)
    assert adaptive.parse_budget("90min") == adaptive.Budget(hours=1.5)
    assert adaptive.parse_budget(None) is None
    for bad in ("forty", "2.5runs", "0h", "3 days"):
        with pytest.raises(UserError, match=r"--budget"):
            adaptive.parse_budget(bad)
    pairs = {"a": adaptive.Pair("a", "a", "base"), "b": adaptive.Pair("b", "b", "base")}
    base = np.array([0.5, -0.4, 0.3, -0.2, 0.1, -0.3, 0.4, -0.5, 0.2, -0.1, 0.35, -0.25])
    diffs = {"a": base + 6, "b": base * 30 + 1}  # a settles at 6 seeds; b stays open
    # 3 arms x 3 seeds = 9 runs; 6 seeds of all 3 = 18; then only b and base go on: 9 seeds = 18 + 6 = 24.
    for runs, n_b in ((17, 3), (18, 6), (23, 6), (24, 9)):
        rule = adaptive.budget_rule(DESIGN, pairs, adaptive.Budget(runs=runs), {})
        tr = sq.replay(DESIGN, diffs, next_round_fits=rule).tracks
        assert tr["b"].n == n_b and tr["b"].status == sq.OUT_OF_BUDGET, (runs, tr["b"].n)
    wall = {(arm, k): 600.0 for arm in ("a", "b", "base") for k in range(12)}  # 10 min per run
    rule = adaptive.budget_rule(DESIGN, pairs, adaptive.Budget(hours=3.0), wall)  # 18 runs = 3 h
    assert sq.replay(DESIGN, diffs, next_round_fits=rule).tracks["b"].n == 6
    assert adaptive.run_range(DESIGN, list(pairs.values())) == (9, 36)


def test_paired_diffs_stop_at_a_gap():
    from keras_tl.study import adaptive

    values = {"a": {0: 0.5, 1: 0.6, 2: 0.7, 4: 0.9}, "base": {0: 0.4, 1: 0.4, 2: 0.4, 3: 0.4, 4: 0.4}}
    d = adaptive.paired_diffs([adaptive.Pair("a", "a", "base")], values)["a"]
    assert d == pytest.approx([0.1, 0.2, 0.3])
