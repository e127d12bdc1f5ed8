"""`promtool check metrics` has nothing to say about /metrics."""

from __future__ import annotations

import shutil
import subprocess

import pika


def test_metrics_pass_promtool_check(broker):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/install-prometheus.sh first"
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(host=broker.amqp_host, port=broker.amqp_port,
                                  credentials=pika.PlainCredentials("guest", "guest"))
    )
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("promtool-q", durable=True)
    for i in range(20):
        ch.basic_publish("", "promtool-q", b"m%d" % i, pika.BasicProperties(delivery_mode=2))
    ch.basic_get("promtool-q", auto_ack=False)
    for path in ("/metrics", "/metrics/per-object"):
        text = broker.get_text(path)
        assert "ferrymq_queue_messages_ready{vhost=\"/\",queue=\"promtool-q\"} 19" in text
        out = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                             capture_output=True, timeout=30)
        said = (out.stdout + out.stderr).decode().strip()
        assert out.returncode == 0 and said == "", f"promtool on {path}: {said}"
    conn.close()
