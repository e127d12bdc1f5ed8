"""The command-line contract: --version, the ready line, SIGTERM, and the
one-line reasons for a port in use or a bad config."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pika
import pytest

from conformance.support import (
    BINARY,
    REPO,
    WAIT,
    Broker,
    RawAmqp,
    basic_consume,
    channel_error,
    deadline_for,
    queue_declare,
    unique,
)


def cargo_version() -> str:
    text = (REPO / "Cargo.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


def test_version_prints_the_crate_version():
    out = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"ferrymq {cargo_version()}"


def test_ready_line_names_the_bound_amqp_address():
    b = Broker().start()
    try:
        assert re.search(r"\bready\b", b.ready_line)
        assert b.host == "127.0.0.1" and b.port > 0, b.ready_line
        with socket.create_connection((b.host, b.port), timeout=WAIT):
            pass
    finally:
        assert b.stop() == 0


def test_sigterm_closes_clients_with_320_and_exits_0():
    b = Broker().start()
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters(host=b.host, port=b.port))
        ch = conn.channel()
        ch.queue_declare(queue="", exclusive=True)
        b.proc.terminate()
        closed = []

        def broker_closed():
            if closed:
                return True
            try:
                conn.process_data_events(time_limit=0.05)
            except pika.exceptions.ConnectionClosedByBroker as e:
                closed.append(e)
            return bool(closed)

        left = deadline_for("connection.close after SIGTERM")
        while not broker_closed():
            left()
        assert closed[0].reply_code == 320, closed[0]
        assert b.wait_exit(timeout=5) == 0
    finally:
        b.kill()


def test_sigterm_right_after_ready_exits_0():
    # The ready line promises a graceful stop from that moment on.
    for _ in range(5):
        b = Broker().start()
        try:
            assert b.stop() == 0, b.stderr_text()
        finally:
            b.kill()


def test_sigterm_exits_0_within_5s_despite_a_consumer_that_stopped_reading():
    b = Broker().start()
    stalled = RawAmqp(b.host, b.port)
    try:
        stalled.handshake()
        stalled.open_channel(1)
        q = unique("stalled")
        stalled.send(queue_declare(1, q) + basic_consume(1, q, no_ack=True))
        stalled.expect_method(50, 11, 1)
        stalled.expect_method(60, 21, 1)
        conn = pika.BlockingConnection(pika.ConnectionParameters(host=b.host, port=b.port))
        ch = conn.channel()
        ch.confirm_delivery()
        for _ in range(400):  # 25 MiB at a socket nobody reads
            ch.basic_publish("", q, b"x" * 65536)
        started = time.monotonic()
        assert b.stop() == 0
        assert time.monotonic() - started < 5
    finally:
        stalled.close()
        b.kill()


def test_sigint_also_exits_0():
    b = Broker().start()
    try:
        b.proc.send_signal(2)
        assert b.wait_exit(timeout=5) == 0
    finally:
        b.kill()


# An informational log line (recovery, say) may precede the reason.
LOG_LINE = re.compile(r"^\S+\s+(TRACE|DEBUG|INFO)\s")


def one_line_failure(b: Broker) -> str:
    code = b.wait_exit()
    lines = [line for line in b.stderr if line.strip() and not LOG_LINE.match(line)]
    assert code != 0, "broker should refuse to start"
    assert len(lines) == 1, f"expected a one-line reason, got:\n{b.stderr_text()}"
    assert lines[0].startswith("ferrymq: "), lines[0]
    return lines[0]


def test_port_in_use_exits_nonzero_with_one_line():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        b = Broker(amqp=f"127.0.0.1:{port}").spawn()
        line = one_line_failure(b)
        assert str(port) in line and "in use" in line.lower(), line
    finally:
        holder.close()


@pytest.mark.parametrize(
    "config, mentions",
    [
        ("amqp_port = 5672\n", "amqp_port"),
        ("amqp = \n", "ferrymq.toml"),
        ('amqp = "nonsense"\n', "nonsense"),
        ('vhosts = ["/"]\nmax_message_bytes = -1\n', "line 2 (max_message_bytes = -1)"),
    ],
    ids=["unknown-key", "malformed-toml", "bad-address", "negative-size"],
)
def test_bad_config_exits_nonzero_with_one_line(config, mentions):
    b = Broker(config=config).spawn()
    line = one_line_failure(b)
    assert mentions in line, line


def test_missing_config_file_exits_nonzero_with_one_line():
    b = Broker("--config", "/nonexistent/ferrymq.toml").spawn()
    line = one_line_failure(b)
    assert "/nonexistent/ferrymq.toml" in line, line


def test_a_journal_in_a_later_format_exits_nonzero_with_one_line_and_is_kept():
    b = Broker()
    journal = Path(b.data_dir) / "journal"
    journal.mkdir()
    segment = journal / f"{1:020}.seg"
    # A segment header naming format 2, and a record after it.
    data = b"FMQJ" + (2).to_bytes(4, "little") + bytes(range(64))
    segment.write_bytes(data)
    line = one_line_failure(b.spawn())
    assert "journal format 2" in line and "reads format 1" in line, line
    assert segment.read_bytes() == data, "the journal is left as it was"


def test_config_file_keys_apply_and_flags_win():
    # The file asks for a listener on a port we hold; the flag overrides it.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        config = f'amqp = "127.0.0.1:{holder.getsockname()[1]}"\nmax_message_bytes = 100\n'
        b = Broker(config=config).start()  # Broker passes --amqp 127.0.0.1:0
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters(host=b.host, port=b.port))
            ch = conn.channel()
            ch.basic_publish("", "nowhere", b"x" * 100)
            err = channel_error(ch, lambda: ch.basic_publish("", "nowhere", b"x" * 101))
            assert err.reply_code == 406, err
            conn.close()
        finally:
            assert b.stop() == 0
    finally:
        holder.close()


def test_amqp_off_serves_no_amqp_listener():
    b = Broker(amqp="off").start()
    try:
        assert "amqp=" not in b.ready_line, b.ready_line
    finally:
        assert b.stop() == 0
