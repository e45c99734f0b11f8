"""Wall time of each way an ImageNet download can fail, through the real CLIs.

    python tools/time_download_failures.py                 # KERAS_TL_DOWNLOAD_TIMEOUT=5, ~1 minute
    python tools/time_download_failures.py --timeout 60    # the default timeout, ~4 minutes
    python tools/time_download_failures.py --train         # also the trainer end to end (imports TensorFlow)

Each mode runs ``python -m keras_tl.weights fetch mobilenetv3small`` in a fresh process with an
empty KERAS_HOME and KERAS_TL_WEIGHTS_MIRROR pointing at a server started here, on 127.0.0.1, in
a thread (nothing leaves the machine). Prints one row per mode: seconds, exit status, and the
reason the error line gives. A name lookup that never answers cannot be staged for a child
process, so that mode is timed in this process (socket.getaddrinfo blocked).
"""

from __future__ import annotations

import argparse
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from keras_tl import backbones, download  # noqa: E402

BACKBONE = "mobilenetv3small"
FILE = backbones.get(BACKBONE).weights_file
RELEASE = threading.Event()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        try:
            self._answer(self.server.mode)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass

    def _answer(self, mode):
        body = b"x" * 2_000_000
        if mode == "404":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "junk":
            self.wfile.write(body)
        elif mode == "mid_file":
            self.wfile.write(body[:700_000])
            self.close_connection = True
        elif mode == "trickle":
            for i in range(10_000):
                if RELEASE.wait(0.5):
                    return
                self.wfile.write(b"x")
                self.wfile.flush()
        elif mode == "stall_after_headers":
            RELEASE.wait(600)

    def log_message(self, *args):
        pass


def _server(mode):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.mode = mode
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_port}/"


def _run(cmd, env):
    t = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    took = time.monotonic() - t
    last = (r.stderr.strip().splitlines() or [""])[-1]
    reason = last.split(": cannot download ", 1)[-1].split("; the Keras cache file", 1)[0]
    return took, r.returncode, reason, last


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timeout", type=float, default=5.0, help="KERAS_TL_DOWNLOAD_TIMEOUT for every mode (default 5)")
    p.add_argument("--train", action="store_true", help="also time python -m keras_tl.train with a silent mirror")
    args = p.parse_args()
    env0 = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env0.update(PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", KERAS_TL_DOWNLOAD_TIMEOUT=f"{args.timeout:g}")
    fetch = [sys.executable, "-m", "keras_tl.weights", "fetch", BACKBONE]
    rows, servers = [], []
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/"
    dead.close()
    modes = [("connection refused", dead_url), ("DNS failure (.invalid)", "http://keras-tl-test.invalid/"),
             ("accepts, never answers", f"http://127.0.0.1:{silent.getsockname()[1]}/")]
    labels = {"404": "HTTP 404", "junk": "junk (hash mismatch)", "mid_file": "closes mid-file",
              "stall_after_headers": "headers, then silence", "trickle": "trickle (1 byte / 0.5 s)"}
    for mode, label in labels.items():
        srv, url = _server(mode)
        servers.append(srv)
        modes.append((label, url))
    try:
        for name, url in modes:
            with tempfile.TemporaryDirectory() as home:
                took, rc, reason, _ = _run(fetch, dict(env0, KERAS_HOME=home, KERAS_TL_WEIGHTS_MIRROR=url))
                left = sorted(f for f in os.listdir(os.path.join(home, "models")) if not f.endswith(".lock")) \
                    if os.path.isdir(os.path.join(home, "models")) else []
            rows.append((name, took, rc, reason + (f" [LEFT IN CACHE: {left}]" if left else "")))
        # A name lookup that never answers, in this process.
        os.environ.update(KERAS_TL_DOWNLOAD_TIMEOUT=f"{args.timeout:g}", KERAS_TL_WEIGHTS_MIRROR="http://hangs.example/")
        gate = threading.Event()
        real = socket.getaddrinfo
        socket.getaddrinfo = lambda *a, **k: (gate.wait(600), real(*a, **k))[1]
        with tempfile.TemporaryDirectory() as home:
            t = time.monotonic()
            try:
                download.ensure(download.RemoteFile(FILE, "unused", backbones.get(BACKBONE).weights_hash), home, log=lambda m: None)
                reason = "no error?"
            except download.DownloadError as e:
                reason = str(e).split(": cannot download ", 1)[-1].split("; the Keras cache file", 1)[0]
            rows.append(("name lookup never answers (in-process)", time.monotonic() - t, 2, reason))
        gate.set()
        socket.getaddrinfo = real
        if args.train:
            recipe = os.path.join(REPO, "recipes", "smoke.yaml")
            with tempfile.TemporaryDirectory() as home:
                wd = os.path.join(home, "run")
                cmd = [sys.executable, "-m", "keras_tl.train", "--recipe", recipe, "--workdir", wd, "--set", "model.weights=imagenet"]
                took, rc, reason, last = _run(cmd, dict(env0, KERAS_HOME=home, KERAS_TL_WEIGHTS_MIRROR=modes[2][1]))
                rows.append((f"keras_tl.train, silent mirror (run dir left: {os.path.exists(wd)})", took, rc, reason))
    finally:
        RELEASE.set()
        silent.close()
        for srv in servers:
            srv.shutdown()
    print(f"KERAS_TL_DOWNLOAD_TIMEOUT={args.timeout:g}")
    print(f"{'mode':<44} {'seconds':>8} {'exit':>4}  reason")
    for name, took, rc, reason in rows:
        print(f"{name:<44} {took:8.1f} {rc:>4}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
