"""amqplib, Node's most used AMQP 0-9-1 client, against the broker: each
scenario in clients/amqplib_scenarios.js runs in a Node process of its
own and passes when it prints "ok" and exits 0 (it asserts with
node:assert and bounds every wait). scripts/install-amqp-clients.sh
installs amqplib."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conformance.support import WAIT

CLIENTS = Path(__file__).resolve().parent / "clients"
SCRIPT = CLIENTS / "amqplib_scenarios.js"
INSTALL_HINT = "run scripts/install-amqp-clients.sh (scripts/test does)"


def scenarios() -> list[str]:
    node = shutil.which("node")
    assert node, f"node is not installed: {INSTALL_HINT}"
    listed = subprocess.run([node, str(SCRIPT), "--list"], capture_output=True, text=True, timeout=WAIT)
    assert listed.returncode == 0, f"amqplib scenarios not listed ({INSTALL_HINT}): {listed.stderr}"
    return listed.stdout.split()


@pytest.mark.parametrize("scenario", scenarios())
def test_amqplib(broker, scenario):
    url = f"amqp://guest:guest@{broker.host}:{broker.port}"
    try:
        run = subprocess.run(
            [shutil.which("node"), str(SCRIPT), scenario, url], capture_output=True, text=True, timeout=4 * WAIT
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"timed out after {4 * WAIT:.0f}s waiting for amqplib scenario {scenario}") from e
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), (
        f"amqplib scenario {scenario} exited {run.returncode}:\n{run.stdout}{run.stderr}"
    )
