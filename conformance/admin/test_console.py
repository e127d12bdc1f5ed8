"""The web console in Debian's headless Chromium, driven by playwright-core:
a queue created over AMQP appears with its depth, is purged from the
page, and screenshots land in artifacts/."""

from __future__ import annotations

import shutil
import subprocess

import pika

from .conftest import ARTIFACTS, REPO

BROWSER = REPO / "conformance" / "admin" / "browser"


def test_console_shows_an_amqp_queue_and_purges_it(broker):
    assert shutil.which("node"), "node is missing"
    assert (BROWSER / "node_modules" / "playwright-core").exists(), \
        "playwright-core is missing: run npm ci in conformance/admin/browser"
    assert shutil.which("chromium"), "chromium is missing: apt-get install chromium"
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(host=broker.amqp_host, port=broker.amqp_port,
                                  credentials=pika.PlainCredentials("guest", "guest"))
    )
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("console-orders", durable=True)
    for i in range(7):
        ch.basic_publish("", "console-orders", b"order %d" % i, pika.BasicProperties(delivery_mode=2))
    ARTIFACTS.mkdir(exist_ok=True)
    run = subprocess.run(
        ["node", "console.mjs", f"http://{broker.http}", "console-orders", "7", str(ARTIFACTS)],
        cwd=BROWSER, capture_output=True, timeout=120,
    )
    assert run.returncode == 0, (run.stdout + run.stderr).decode()
    status, q = broker.api("GET", "/api/queues/%2F/console-orders")
    assert status == 200 and q["messages_ready"] == 0, q
    for name in ("console-overview.png", "console-queues.png", "console-queue-purged.png"):
        assert (ARTIFACTS / name).stat().st_size > 0, name
    conn.close()
