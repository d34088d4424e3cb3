"""Every command of the README's "Using it" section, run as written against `make run`'s stack.

The stack is ``scripts/demo.py`` itself (what ``make run`` runs after its set-up): a real
controller with its embedded etcd, a real ``qvdc-node`` and the demo pool, over mTLS. It
runs in a directory of its own (``QUANTIX_RUN_DIR``, ``HOME``), where ``.venv`` links to
this checkout's, so the commands run verbatim from there: ``qvdcctl`` finds the
controller through ``.run/context.json`` exactly as in a second terminal beside
``make run``. Each command must exit 0; a few outputs are checked for what the
command is for. Then Ctrl-C (SIGINT) must stop everything the demo started.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def using_it_commands() -> list[str]:
    """The first ``sh`` block of the README's "## Using it" section, one command a line."""
    text = README.read_text()
    section = text.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README: no sh block under 'Using it'"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_lists_the_commands_an_operator_needs() -> None:
    commands = using_it_commands()
    assert any("pools create" in c for c in commands)
    assert any(c.startswith("etcdctl") for c in commands)


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        if proc.poll() is not None:
            raise AssertionError(f"make run's demo exited {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} in the demo's output after {timeout} s:\n{text[-3000:]}")


#: The demo's directory, the environment the commands run with, the demo, its output.
Stack = tuple[Path, dict[str, str], "subprocess.Popen[bytes]", Path]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    here = tmp_path / "work"
    here.mkdir()
    (here / ".venv").symlink_to(ROOT / ".venv")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "QUANTIX_RUN_DIR": str(here / ".run"),
        "HOME": str(home),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("QVDC_CONTEXT", None)
    env.pop("QVDC_CONTROLLER", None)
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "demo.py")],
            cwd=here,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # The pool table's host row: the node registered, the pool exists and is measured.
        _wait_for(out, r"\n\s+\S+-demo\s+HEALTHY", proc, timeout=120)
        yield here, env, proc, out
    finally:
        if proc.poll() is None:  # the demo stops what it started on SIGINT
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_every_using_it_command_works_as_written(stack: Stack) -> None:
    here, env, proc, out = stack
    hostname = f"{socket.gethostname()}-demo"
    outputs: dict[str, str] = {}
    for command in using_it_commands():
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=here,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, (
            f"README command failed ({done.returncode}): {command}\n{done.stdout}\n{done.stderr}"
        )
        assert "Traceback" not in done.stderr, (command, done.stderr)
        outputs[command] = done.stdout
    text = "\n".join(f"$ {c}\n{o}" for c, o in outputs.items())
    get_pool = next(o for c, o in outputs.items() if "pools get demo-local" in c)
    assert "demo-local" in get_pool and "LOCAL_DIR" in get_pool, get_pool
    get_node = next(o for c, o in outputs.items() if "nodes get" in c)
    assert hostname in get_node, get_node
    created = next(o for c, o in outputs.items() if "pools create fast" in c)
    assert "fast" in created, created
    watched = next(o for c, o in outputs.items() if "watch --once" in c)
    assert "MAINTENANCE" in watched, f"disabled host not shown in maintenance:\n{watched}"
    keys = next(o for c, o in outputs.items() if c.startswith("etcdctl"))
    assert "/quantix/" in keys, text
    # Ctrl-C stops the demo and everything it started.
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 0, out.read_text()[-2000:]
    assert "stopped the node daemon, the controller and its etcd" in out.read_text()
