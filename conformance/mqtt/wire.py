"""A raw MQTT 3.1.1 / 5.0 client for what paho-mqtt will not send: a
malformed packet, a second CONNECT, an oversized packet, a client that goes
silent or dies without DISCONNECT, QoS 2 flows stopped half way.

Every read has a deadline whose failure message names what was awaited.
"""

from __future__ import annotations

import socket
import struct

from conformance.support import WAIT, Timeout, deadline_for

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15
NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP",
    8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP",
    14: "DISCONNECT", 15: "AUTH",
}

# MQTT 5 properties: id -> (name, type).
PROPERTIES = {
    0x01: ("payload_format", "byte"),
    0x02: ("message_expiry", "u32"),
    0x03: ("content_type", "str"),
    0x08: ("response_topic", "str"),
    0x09: ("correlation_data", "bin"),
    0x0B: ("subscription_id", "varint"),
    0x11: ("session_expiry", "u32"),
    0x12: ("assigned_client_id", "str"),
    0x13: ("server_keep_alive", "u16"),
    0x15: ("auth_method", "str"),
    0x16: ("auth_data", "bin"),
    0x17: ("request_problem_info", "byte"),
    0x18: ("will_delay", "u32"),
    0x19: ("request_response_info", "byte"),
    0x1A: ("response_info", "str"),
    0x1C: ("server_reference", "str"),
    0x1F: ("reason_string", "str"),
    0x21: ("receive_maximum", "u16"),
    0x22: ("topic_alias_maximum", "u16"),
    0x23: ("topic_alias", "u16"),
    0x24: ("maximum_qos", "byte"),
    0x25: ("retain_available", "byte"),
    0x26: ("user_property", "pair"),
    0x27: ("maximum_packet_size", "u32"),
    0x28: ("wildcard_available", "byte"),
    0x29: ("subscription_ids_available", "byte"),
    0x2A: ("shared_available", "byte"),
}
BY_NAME = {name: (pid, kind) for pid, (name, kind) in PROPERTIES.items()}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def properties(**values) -> bytes:
    """MQTT 5 properties by name, with their length prefix. A list value
    repeats the property (user_property=[("k", "v"), ...])."""
    body = b""
    for name, value in values.items():
        pid, kind = BY_NAME[name]
        for v in value if isinstance(value, list) else [value]:
            body += varint(pid)
            if kind == "byte":
                body += bytes([v])
            elif kind == "u16":
                body += struct.pack(">H", v)
            elif kind == "u32":
                body += struct.pack(">I", v)
            elif kind == "varint":
                body += varint(v)
            elif kind in ("str", "bin"):
                body += utf8(v)
            else:
                body += utf8(v[0]) + utf8(v[1])
    return varint(len(body)) + body


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    n, shift = 0, 0
    while True:
        b = data[at]
        at += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, at


def parse_properties(data: bytes, at: int) -> tuple[dict, int]:
    """Reads a property block; user properties come back as a list of pairs."""
    size, at = read_varint(data, at)
    end, props = at + size, {}
    while at < end:
        pid, at = read_varint(data, at)
        name, kind = PROPERTIES[pid]
        if kind == "byte":
            v, at = data[at], at + 1
        elif kind == "u16":
            v, at = struct.unpack(">H", data[at : at + 2])[0], at + 2
        elif kind == "u32":
            v, at = struct.unpack(">I", data[at : at + 4])[0], at + 4
        elif kind == "varint":
            v, at = read_varint(data, at)
        elif kind in ("str", "bin"):
            n = struct.unpack(">H", data[at : at + 2])[0]
            v, at = data[at + 2 : at + 2 + n], at + 2 + n
            v = v.decode() if kind == "str" else v
        else:
            n = struct.unpack(">H", data[at : at + 2])[0]
            k = data[at + 2 : at + 2 + n].decode()
            at += 2 + n
            n = struct.unpack(">H", data[at : at + 2])[0]
            v = (k, data[at + 2 : at + 2 + n].decode())
            at += 2 + n
        if name in ("user_property", "subscription_id"):
            props.setdefault(name, []).append(v)
        else:
            props[name] = v
    return props, end


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connect(
    client_id: str,
    version: int = 5,
    clean: bool = True,
    keepalive: int = 0,
    username: str | None = "guest",
    password: str | None = "guest",
    will: dict | None = None,
    props: bytes | None = None,
) -> bytes:
    """CONNECT; `will` is {topic, payload, qos, retain, props (v5)}."""
    flags = 0x02 if clean else 0
    payload = utf8(client_id)
    if will is not None:
        flags |= 0x04 | will.get("qos", 0) << 3 | (0x20 if will.get("retain") else 0)
        if version == 5:
            payload += will.get("props", properties())
        payload += utf8(will["topic"]) + utf8(will["payload"])
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
    if password is not None:
        flags |= 0x40
        payload += utf8(password)
    header = utf8("MQTT") + bytes([version, flags]) + struct.pack(">H", keepalive)
    if version == 5:
        header += props if props is not None else properties()
    return packet(CONNECT, 0, header + payload)


def publish(
    topic: str,
    payload: bytes = b"",
    qos: int = 0,
    retain: bool = False,
    packet_id: int | None = None,
    dup: bool = False,
    version: int = 5,
    props: bytes | None = None,
) -> bytes:
    body = utf8(topic)
    if qos:
        body += struct.pack(">H", packet_id)
    if version == 5:
        body += props if props is not None else properties()
    flags = int(dup) << 3 | qos << 1 | int(retain)
    return packet(PUBLISH, flags, body + payload)


def ack(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP with success (valid in both versions)."""
    return packet(kind, 0x02 if kind == PUBREL else 0, struct.pack(">H", packet_id))


def subscribe(packet_id: int, filters: list[tuple[str, int]], version: int = 5, props: bytes | None = None) -> bytes:
    """`filters`: (filter, options byte; in 3.1.1 just the QoS)."""
    body = struct.pack(">H", packet_id)
    if version == 5:
        body += props if props is not None else properties()
    for f, opts in filters:
        body += utf8(f) + bytes([opts])
    return packet(SUBSCRIBE, 0x02, body)


def disconnect(version: int = 5, reason: int = 0, props: bytes | None = None) -> bytes:
    if version != 5 or (reason == 0 and props is None):
        return packet(DISCONNECT, 0, b"")
    return packet(DISCONNECT, 0, bytes([reason]) + (props if props is not None else properties()))


PING = packet(PINGREQ, 0, b"")


class Packet:
    """One packet from the broker, its fields parsed for the version."""

    def __init__(self, kind: int, flags: int, body: bytes, version: int):
        self.kind, self.flags, self.body = kind, flags, body
        self.props: dict = {}
        self.reason = 0
        v5 = version == 5
        if kind == CONNACK:
            self.session_present = bool(body[0] & 1)
            self.reason = body[1]
            if v5 and len(body) > 2:
                self.props, _ = parse_properties(body, 2)
        elif kind == PUBLISH:
            self.qos, self.retain, self.dup = (flags >> 1) & 3, bool(flags & 1), bool(flags & 8)
            n = struct.unpack(">H", body[:2])[0]
            self.topic, at = body[2 : 2 + n].decode(), 2 + n
            self.packet_id = None
            if self.qos:
                self.packet_id, at = struct.unpack(">H", body[at : at + 2])[0], at + 2
            if v5:
                self.props, at = parse_properties(body, at)
            self.payload = body[at:]
        elif kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            self.packet_id = struct.unpack(">H", body[:2])[0]
            if len(body) > 2:
                self.reason = body[2]
            if len(body) > 3:
                self.props, _ = parse_properties(body, 3)
        elif kind in (SUBACK, UNSUBACK):
            self.packet_id, at = struct.unpack(">H", body[:2])[0], 2
            if v5:
                self.props, at = parse_properties(body, at)
            self.codes = list(body[at:])
        elif kind == DISCONNECT:
            if body:
                self.reason = body[0]
            if len(body) > 1:
                self.props, _ = parse_properties(body, 1)

    @property
    def name(self) -> str:
        return NAMES.get(self.kind, str(self.kind))

    def __repr__(self) -> str:
        return f"{self.name}(reason=0x{self.reason:02x}, props={self.props}, {len(self.body)} bytes)"


class Closed(Exception):
    """The broker closed the TCP connection."""


class RawMqtt:
    """A hand-driven MQTT connection: exactly the bytes a test wants out,
    the broker's packets read one by one."""

    def __init__(self, broker, version: int = 5):
        self.version = version
        self.sock = socket.create_connection((broker.mqtt_host, broker.mqtt_port), timeout=WAIT)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self, n: int, left) -> None:
        while len(self.buf) < n:
            self.sock.settimeout(left())
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed()
            self.buf += chunk

    def read(self, what: str = "a packet", timeout: float = WAIT) -> Packet:
        left = deadline_for(what, timeout)
        self._fill(2, left)
        size, shift, at = 0, 0, 1
        while True:
            self._fill(at + 1, left)
            b = self.buf[at]
            at += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        self._fill(at + size, left)
        first, body = self.buf[0], self.buf[at : at + size]
        self.buf = self.buf[at + size :]
        return Packet(first >> 4, first & 0x0F, body, self.version)

    def expect(self, kind: int, what: str | None = None, timeout: float = WAIT) -> Packet:
        """The next packet, which must be of `kind` (PINGRESPs skipped)."""
        what = what or NAMES[kind]
        while True:
            try:
                p = self.read(what, timeout)
            except Closed:
                raise AssertionError(f"the broker closed the connection while {what} was awaited") from None
            if p.kind == PINGRESP and kind != PINGRESP:
                continue
            assert p.kind == kind, f"expected {what}, got {p!r}"
            return p

    def expect_eof(self, what: str = "the broker to close the connection", timeout: float = WAIT) -> list[Packet]:
        """Reads until the broker closes the socket; returns the packets seen."""
        left = deadline_for(what, timeout)
        seen = []
        while True:
            try:
                seen.append(self.read(what, left()))
            except Closed:
                return seen
            except Timeout:
                raise Timeout(f"timed out waiting for {what}; packets seen: {seen}") from None

    def connect(self, client_id: str, **kwargs) -> Packet:
        """CONNECT, then its CONNACK."""
        self.send(connect(client_id, version=self.version, **kwargs))
        return self.expect(CONNACK)
