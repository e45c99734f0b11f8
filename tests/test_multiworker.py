"""Multi-worker training over localhost: two processes, TF_CONFIG, MultiWorkerMirroredStrategy."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tools", "multiworker_worker.py")
TIMEOUT_S = 120


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_two_local_workers_train_in_lock_step(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        log = open(tmp_path / f"worker{index}.log", "w+")
        procs.append((subprocess.Popen([sys.executable, WORKER, "--steps", "2"], env=env, cwd=REPO,
                                       stdout=log, stderr=subprocess.STDOUT, text=True), log))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"multi-worker run did not finish in {TIMEOUT_S}s")
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = []
    for index, (proc, log) in enumerate(procs):
        log.seek(0)
        out = log.read()
        log.close()
        assert proc.returncode == 0, f"worker {index} exited {proc.returncode}:\n{out[-3000:]}"
        lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
        assert lines, out[-3000:]
        results.append(json.loads(lines[-1][len("RESULT "):]))
    for index, r in enumerate(results):
        assert r["kind"] == "multi_worker" and r["replicas"] == 2
        assert r["task"] == {"type": "worker", "index": index}
        assert r["is_chief"] == (index == 0)
        assert len(r["loss"]) == 1
    # synchronous training: both workers end with the same weights
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=1e-6)
