"""rabbitmq-c, the C client, through Debian's amqp-tools (amqp-declare-queue,
amqp-publish, amqp-get, amqp-consume, amqp-delete-queue), the way operators'
shell scripts use them; pika checks what they left behind.
scripts/install-amqp-clients.sh installs the tools."""

from __future__ import annotations

import os
import shutil
import subprocess

from conformance.support import WAIT, channel_error, unique

INSTALL_HINT = "run scripts/install-amqp-clients.sh (scripts/test does)"


def tool(broker, name: str, *args: str, stdin: str | bytes | None = None) -> bytes:
    """Runs one of the amqp-tools to completion; returns its standard output."""
    path = shutil.which(name)
    assert path, f"{name} is not installed: {INSTALL_HINT}"
    url = f"amqp://guest:guest@{broker.host}:{broker.port}"
    try:
        done = subprocess.run(
            [path, "--url", url, *args],
            input=stdin.encode() if isinstance(stdin, str) else stdin,
            capture_output=True,
            timeout=WAIT,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"timed out after {WAIT:.0f}s waiting for {name} {' '.join(args)}") from e
    assert done.returncode == 0, f"{name} {' '.join(args)} exited {done.returncode}: {done.stderr.decode()}"
    return done.stdout


def test_declare_publish_get_consume_and_delete(broker, ch):
    q = unique("c-tools")
    assert tool(broker, "amqp-declare-queue", "-d", "-q", q).decode().strip() == q
    ok = ch.queue_declare(q, passive=True)
    assert ok.method.message_count == 0
    lines = "".join(f"line {i}\n" for i in range(4))
    tool(broker, "amqp-publish", "-r", q, "-p", "-C", "text/plain", "-H", "site: north", "-l", stdin=lines)
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"line 0\n", "-l keeps each line's newline"
    assert (props.content_type, props.delivery_mode, props.headers) == ("text/plain", 2, {"site": "north"})
    assert method.message_count == 3
    assert tool(broker, "amqp-get", "-q", q) == b"line 1\n"
    # amqp-consume runs `cat` once per message, the body on its stdin.
    assert tool(broker, "amqp-consume", "-q", q, "-c", "2", "cat") == b"line 2\nline 3\n"
    tool(broker, "amqp-delete-queue", "-q", q)
    err = channel_error(ch, lambda: ch.queue_declare(q, passive=True))
    assert err.reply_code == 404, err


def test_a_body_larger_than_its_frame_max_goes_in_pieces_both_ways(broker, ch):
    q = unique("c-big")
    ch.queue_declare(q, exclusive=False, auto_delete=False)
    body = os.urandom(600 * 1024)
    tool(broker, "amqp-publish", "-r", q, "-p", stdin=body)
    assert tool(broker, "amqp-get", "-q", q) == body
    ch.basic_publish("", q, body)
    assert tool(broker, "amqp-consume", "-q", q, "-c", "1", "cat") == body
    ch.queue_delete(q)


def test_publishing_to_a_missing_exchange_fails_the_tool(broker):
    path = shutil.which("amqp-publish")
    assert path, f"amqp-publish is not installed: {INSTALL_HINT}"
    done = subprocess.run(
        [path, "--url", f"amqp://guest:guest@{broker.host}:{broker.port}", "-e", unique("nowhere"), "-b", "x"],
        capture_output=True,
        timeout=WAIT,
    )
    # The channel close (404) reaches the tool at its closing round trip.
    assert done.returncode != 0
    assert b"NOT_FOUND" in done.stderr + done.stdout, done.stderr
