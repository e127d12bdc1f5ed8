"""Fixtures: ferrymq as a child process, pika connections to it, and the
expected-failures list."""

from __future__ import annotations

from pathlib import Path

import pika
import pytest

from conformance.support import BINARY, Broker

EXPECTED_FAILURES = Path(__file__).with_name("expected-failures.txt")


def pytest_sessionstart(session):
    if not BINARY.exists():
        raise pytest.UsageError(f"{BINARY} does not exist; build it (scripts/test does) or set FERRYMQ_BIN")


def _expected_failures() -> dict[str, str]:
    """`test id  reason` per line; `#` starts a comment."""
    known: dict[str, str] = {}
    for line in EXPECTED_FAILURES.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        test_id, _, reason = line.partition(" ")
        if not reason.strip():
            raise pytest.UsageError(f"{EXPECTED_FAILURES.name}: '{test_id}' needs a reason")
        known[test_id] = reason.strip()
    return known


def pytest_collection_modifyitems(config, items):
    known = _expected_failures()
    root = Path(__file__).parent
    seen = set()
    for item in items:
        test_id = str(item.path.relative_to(root)) + "::" + item.name
        if test_id in known:
            seen.add(test_id)
            # strict: a test that starts passing must leave the list.
            item.add_marker(pytest.mark.xfail(reason=known[test_id], strict=True))
    stale = set(known) - seen
    if stale and not config.getoption("-k") and not config.getoption("--deselect"):
        collected = {str(i.path.relative_to(root)) for i in items}
        stale = {t for t in stale if t.split("::")[0] in collected}
        if stale:
            raise pytest.UsageError(f"{EXPECTED_FAILURES.name} names tests that do not exist: {sorted(stale)}")


@pytest.fixture(scope="module")
def broker():
    """One broker per test module; tests keep apart by unique names."""
    b = Broker().start()
    yield b
    code = b.stop()
    assert code == 0, f"broker exited {code} after SIGTERM; stderr:\n{b.stderr_text()}"


@pytest.fixture
def params(broker):
    return pika.ConnectionParameters(
        host=broker.host,
        port=broker.port,
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1,
        blocked_connection_timeout=30,
    )


@pytest.fixture
def connect(params):
    """Opens pika connections; closes whatever is left open at the end."""
    opened = []

    def open_one(**overrides):
        p = params
        if overrides:
            p = pika.ConnectionParameters(
                host=params.host,
                port=params.port,
                credentials=overrides.pop("credentials", params.credentials),
                connection_attempts=1,
                **overrides,
            )
        conn = pika.BlockingConnection(p)
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        if conn.is_open:
            try:
                conn.close()
            except Exception:
                pass


@pytest.fixture
def conn(connect):
    return connect()


@pytest.fixture
def ch(conn):
    return conn.channel()
