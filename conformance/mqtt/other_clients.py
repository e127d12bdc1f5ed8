"""MQTT clients other than paho, as the conformance suite drives them:
MQTT.js (through clients/mqttjs_driver.js, one Node process per client)
and Debian's mosquitto-clients (mosquitto_pub, mosquitto_sub, mosquitto_rr
as child processes). scripts/install-mqtt-clients.sh installs both.

Every wait is for an event (a JSON event line from MQTT.js, a line of
mosquitto_sub's output, a process exiting) with a deadline that names it.
"""

from __future__ import annotations

import base64
import itertools
import json
import queue
import shutil
import subprocess
import threading
from pathlib import Path

from conformance.mqtt.conftest import ANY, Events
from conformance.support import WAIT, deadline_for, next_line, stop_child, unique

CLIENTS = Path(__file__).resolve().parent / "clients"
INSTALL_HINT = "run scripts/install-mqtt-clients.sh (scripts/test does)"
#: Command ids are unique across clients, so clients can share one Events.
_ids = itertools.count(1)


def require(program: str) -> str:
    path = shutil.which(program)
    assert path, f"{program} is not installed: {INSTALL_HINT}"
    return path


class MqttJs:
    """One MQTT.js client in a Node process of its own. Clients given one
    `events` put their events together (each names its `client`)."""

    def __init__(self, broker, events: Events | None = None, client_id: str | None = None):
        assert (CLIENTS / "node_modules" / "mqtt").is_dir(), f"MQTT.js is not installed: {INSTALL_HINT}"
        self.broker = broker
        self.client_id = client_id or unique("js")
        self.events = Events() if events is None else events
        self.proc = subprocess.Popen(
            [require("node"), str(CLIENTS / "mqttjs_driver.js")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            e = json.loads(line)
            e["client"] = self.client_id
            self.events.put(e["event"], e.get("id", e.get("topic")), e)
        self.events.put("exit", None, self.proc.wait())

    def _send(self, **command) -> None:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def take(self, kind: str, what: str, key=None):
        e = self.events.take(kind, f"MQTT.js {self.client_id}: {what}", key=ANY if key is None else key)
        assert kind == "exit" or not e.get("error"), f"MQTT.js {what}: {e['error']}"
        return e

    def connect(self, version: int = 5, clean: bool = True, expect: int = 0, **options) -> dict:
        """Connects as guest; waits for CONNACK (or, for a refusal, the error)."""
        options = {
            "protocolVersion": version,
            # MQTT 3.1 names its protocol differently.
            **({"protocolId": "MQIsdp"} if version == 3 else {}),
            "clientId": self.client_id,
            "clean": clean,
            "username": "guest",
            "password": "guest",
            **options,
        }
        self._send(op="connect", url=f"mqtt://{self.broker.mqtt_host}:{self.broker.mqtt_port}", options=options)
        if expect:
            return self.take("error", f"the broker's refusal ({expect:#x})")
        return self.take("connect", "CONNACK")

    def subscribe(self, topic: str, qos: int = 0, **options) -> list[int]:
        """Subscribes; returns the granted QoS (or reason codes) from SUBACK."""
        i = next(_ids)
        self._send(op="subscribe", id=i, topic=topic, options={"qos": qos, **options})
        return [g["qos"] for g in self.take("suback", f"SUBACK for {topic}", key=i)["granted"]]

    def publish(self, topic: str, payload: bytes, qos: int = 0, wait: bool = True, **options) -> int | None:
        """Publishes; with `wait` waits until MQTT.js reports it done
        (sent at QoS 0, PUBACK at 1, PUBCOMP at 2) and returns the reason code."""
        i = next(_ids)
        body = base64.b64encode(payload).decode()
        self._send(op="publish", id=i, topic=topic, payload=body, options={"qos": qos, **options})
        if wait:
            return self.take("published", f"completion of the QoS {qos} publish to {topic}", key=i)["reasonCode"]
        return i

    def published(self, i: int) -> int:
        return self.take("published", f"completion of publish #{i}", key=i)["reasonCode"]

    def message(self, what: str = "a message") -> dict:
        m = self.take("message", what)
        m["payload"] = base64.b64decode(m["payload"])
        return m

    def end(self) -> None:
        self._send(op="end")
        self.take("end", "the end of its connection")

    def close(self) -> None:
        stop_child(self.proc)


class Lines:
    """A child process whose output lines a test waits for."""

    def __init__(self, args: list[str]):
        self.args = args
        self.name = next((Path(a).name for a in args if "mosquitto" in a or "node" in a), Path(args[0]).name)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, what: str, match=lambda line: True) -> str:
        """The next output line for which `match` holds (skipping others)."""
        left = deadline_for(f"{what} from {self.name}", WAIT)
        while True:
            line = next_line(self.lines, left)
            if line is None:
                raise AssertionError(f"{self.name} ended before {what}; its output:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if match(line):
                return line

    def exit_code(self, what: str) -> int:
        try:
            return self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"timed out after {WAIT:.0f}s waiting for {what}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def mosquitto_args(program: str, broker, version: int, *args: str) -> list[str]:
    """A mosquitto client's command line against the broker as guest, its
    output line-buffered (into a pipe it would be held back in blocks)."""
    return [
        require("stdbuf"),
        "-oL",
        require(program),
        "-h",
        broker.mqtt_host,
        "-p",
        str(broker.mqtt_port),
        "-u",
        "guest",
        "-P",
        "guest",
        "-V",
        {3: "mqttv31", 4: "mqttv311", 5: "mqttv5"}[version],
        *args,
    ]


def mosquitto_pub(broker, version: int, *args: str, stdin: str | None = None) -> str:
    """Runs mosquitto_pub to completion (it waits for its acks); returns its output."""
    done = subprocess.run(
        mosquitto_args("mosquitto_pub", broker, version, *args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 0, f"mosquitto_pub {' '.join(args)} exited {done.returncode}: {done.stderr}{done.stdout}"
    return done.stdout
