"""A real Prometheus (Debian's package) scrapes ferrymq while `ferrymq bench`
loads it; every query in the Grafana dashboard must then return data
through Prometheus' HTTP API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pika

from .conftest import REPO, WAIT, LineWatcher, binary, wait_until

DASHBOARD = REPO / "grafana" / "dashboards" / "ferrymq-overview.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_queries() -> list[tuple[str, str]]:
    queries = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                # Grafana picks the rate window; with a 1 s scrape, 30 s is plenty.
                queries.append((p["title"], t["expr"].replace("$__rate_interval", "30s")))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return queries


class Prometheus:
    def __init__(self, target: str):
        exe = shutil.which("prometheus")
        assert exe, "prometheus is missing: run scripts/install-prometheus.sh first"
        self.dir = Path(tempfile.mkdtemp(prefix="ferrymq-prom-"))
        config = self.dir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: ferrymq\n"
            "    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.addr = f"127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [exe, f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address={self.addr}", "--log.level=info"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.log = LineWatcher(self.proc.stderr)
        self.log.wait_for("Server is ready to receive web requests", "Prometheus to start")

    def query(self, expr: str) -> dict:
        url = f"http://{self.addr}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=WAIT) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_every_dashboard_query_returns_data_from_a_real_prometheus(broker):
    prom = Prometheus(broker.http)
    try:
        # A queue that keeps a backlog, so per-queue series exist after the
        # benchmark's own queues are drained.
        conn = pika.BlockingConnection(
            pika.ConnectionParameters(host=broker.amqp_host, port=broker.amqp_port,
                                      credentials=pika.PlainCredentials("guest", "guest"))
        )
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("prom-backlog", durable=True, arguments={"x-message-ttl": 600000})
        for i in range(50):
            ch.basic_publish("", "prom-backlog", b"x" * 100, pika.BasicProperties(delivery_mode=2))
        ch.basic_get("prom-backlog", auto_ack=False)
        wait_until("Prometheus to scrape ferrymq",
                   lambda: prom.query('up{job="ferrymq"} == 1')["data"]["result"])
        bench = subprocess.run(
            [str(binary()), "bench", "--amqp", broker.amqp, "--scenario", "confirms-acks-1k",
             "--messages", "20000", "--seconds", "6"],
            capture_output=True, timeout=120,
        )
        assert bench.returncode == 0, bench.stderr.decode()
        wait_until("the load to show in Prometheus",
                   lambda: prom.query('sum(rate(ferrymq_messages_published_total[30s])) > 0')["data"]["result"])
        queries = dashboard_queries()
        assert len(queries) >= 20

        def missing():
            return [(title, expr) for title, expr in queries
                    if not (r := prom.query(expr))["status"] == "success" or not r["data"]["result"]]

        empty = missing()
        if empty:
            # Histogram rates need two scrapes that saw observations.
            try:
                wait_until("every dashboard query to return data", lambda: not missing(), timeout=15)
                empty = []
            except AssertionError:
                empty = missing()
        assert not empty, "dashboard queries with no data:\n" + "\n".join(f"{t}: {e}" for t, e in empty)
        published = prom.query('sum(ferrymq_messages_published_total{protocol="amqp"})')
        assert float(published["data"]["result"][0]["value"][1]) >= 1000
        conn.close()
    finally:
        prom.stop()
