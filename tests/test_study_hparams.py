"""The study's TensorBoard HParams experiment: one session per finished run, factors + seed + lr, final metrics."""

import glob
import os

from keras_tl.study import hparams
from test_study_runner import make_plan  # tests/ is on sys.path (pytest's rootdir-relative import)


def _events(logdir):
    import tensorflow as tf
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = []
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    out.append(("hparams", data))
                else:
                    out.append((v.tag, float(tf.make_ndarray(v.tensor))))
    return out


def test_hparams_experiment_has_every_finished_run(tmp_path):
    plan = make_plan(tmp_path, "freeze: [head_only, all]\nseeds: 2\nlr_grid: [0.001, 0.01]\n")
    wd = str(tmp_path / "wd")
    results = {r.key: {"val": {"accuracy": 0.5 + 0.01 * k}, "test": {"accuracy": 0.4, "loss": 1.0}, "history": {}}
               for k, r in enumerate(plan.runs[:-1])}  # the last run has not finished
    out = hparams.write_hparams(plan, wd, results)
    assert out == os.path.join(wd, "hparams") and not glob.glob(os.path.join(wd, ".hparams.tmp-*"))
    config = [d for kind, d in _events(out) if kind == "hparams"][0].experiment
    assert {h.name for h in config.hparam_infos} == {"freeze", "seed", "lr"}
    assert {m.name.tag for m in config.metric_infos} == {"val/accuracy", "test/accuracy", "test/loss"}
    sessions = 0
    for r in plan.runs:
        d = os.path.join(out, *r.key.split("/"))
        if r.key not in results:
            assert not os.path.exists(d)
            continue
        ev = _events(d)
        start = [data for kind, data in ev if kind == "hparams"][0].session_start_info
        assert start.hparams["seed"].number_value == r.seed and abs(start.hparams["lr"].number_value - r.lr) < 1e-12
        assert start.hparams["freeze"].string_value in ("head_only", "all")
        scalars = dict((k, v) for k, v in ev if k != "hparams")  # stored as float32
        assert abs(scalars["val/accuracy"] - results[r.key]["val"]["accuracy"]) < 1e-6
        sessions += 1
    assert sessions == len(plan.runs) - 1
    hparams.write_hparams(plan, wd, results)  # rewritten whole, not appended
    assert len(glob.glob(os.path.join(out, "events.out.tfevents.*"))) == 1
