"""``qvdc --log-format json`` through the real entry point: every line a JSON object with the
base fields, from start-up to the end of the shutdown; and the configuration read from the
environment by the real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qvdc.settings import EtcdSettings

ROOT = Path(__file__).resolve().parents[2]


def wait_for_line(log_path: Path, proc: subprocess.Popen[bytes], text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in log_path.read_text():
        assert proc.poll() is None, f"qvdc exited {proc.returncode}:\n{log_path.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in 30 s:\n{log_path.read_text()}"
        time.sleep(0.05)


@pytest.mark.e2e
def test_json_logs_from_start_to_stop(etcd_settings: EtcdSettings, tmp_path: Path) -> None:
    (endpoint,) = etcd_settings.endpoints
    log_path = tmp_path / "qvdc.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        # The environment names settings as the flags do: these must reach the replica.
        "QVDC_LOG_FORMAT": "json",
        "QVDC_ETCD_ENDPOINTS": endpoint,
        "QVDC_ETCD_PREFIX": etcd_settings.prefix,
        "QVDC_REPLICA_ID": "json-replica",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "qvdc", "--listen", "127.0.0.1:0", "--tls-mode", "off",
                "--state-dir", str(tmp_path / "state"), "--log-level", "debug",
            ],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        wait_for_line(log_path, proc, "serving on")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log_path.read_text()
    assert code == 0, text
    docs = [json.loads(line) for line in text.splitlines()]  # no line may be anything else
    for doc in docs:
        assert {"ts", "level", "logger", "msg"} <= set(doc), doc
        assert doc["ts"].endswith("Z")
    messages = [d["msg"] for d in docs]
    assert any(m.startswith("QvDC replica json-replica serving on 127.0.0.1:") for m in messages)
    assert "received SIGTERM: stopping" in messages
    assert any(d["level"] == "DEBUG" for d in docs)  # --log-level debug, over the default
