// One MQTT.js client, remote-controlled by a conformance test: commands
// arrive on stdin and events leave on stdout, one JSON object per line, so
// the test (conformance/mqtt/mqttjs.py) drives MQTT.js step by step and
// waits on its events the way it waits on paho's callbacks.
//
// Commands: {op: "connect", url, options}, {op: "subscribe", id, topic,
// options}, {op: "unsubscribe", id, topic}, {op: "publish", id, topic,
// payload (base64), options}, {op: "end", options}.
// Events: connect, suback, unsuback, published, message, disconnect (a
// DISCONNECT from the broker), close, error. Binary values (payloads,
// correlation data) travel as base64 both ways.
"use strict";

const mqtt = require("mqtt");
const readline = require("readline");

let client = null;

function emit(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

// Correlation data is binary: base64 in JSON, a Buffer for MQTT.js.
function toMqttProperties(p) {
  if (!p) return p;
  const out = { ...p };
  if (typeof out.correlationData === "string") out.correlationData = Buffer.from(out.correlationData, "base64");
  return out;
}

function fromMqttProperties(p) {
  if (!p) return {};
  const out = { ...p };
  if (Buffer.isBuffer(out.correlationData)) out.correlationData = out.correlationData.toString("base64");
  return out;
}

function errorText(err) {
  return err ? String(err.message || err) : null;
}

function connect(cmd) {
  client = mqtt.connect(cmd.url, {
    reconnectPeriod: 0,
    connectTimeout: 20000,
    ...cmd.options,
    properties: toMqttProperties(cmd.options && cmd.options.properties),
  });
  client.on("connect", (connack) =>
    emit({
      event: "connect",
      sessionPresent: connack.sessionPresent,
      reasonCode: connack.reasonCode ?? connack.returnCode ?? 0,
      properties: fromMqttProperties(connack.properties),
    }),
  );
  client.on("message", (topic, payload, packet) =>
    emit({
      event: "message",
      topic,
      payload: payload.toString("base64"),
      qos: packet.qos,
      retain: packet.retain,
      dup: packet.dup,
      properties: fromMqttProperties(packet.properties),
    }),
  );
  client.on("disconnect", (packet) =>
    emit({ event: "disconnect", reasonCode: packet.reasonCode ?? 0, properties: fromMqttProperties(packet.properties) }),
  );
  client.on("error", (err) => emit({ event: "error", message: errorText(err), code: err && err.code }));
  client.on("close", () => emit({ event: "close" }));
}

function handle(cmd) {
  switch (cmd.op) {
    case "connect":
      connect(cmd);
      break;
    case "subscribe":
      client.subscribe(cmd.topic, { ...cmd.options, properties: toMqttProperties(cmd.options && cmd.options.properties) }, (err, granted) =>
        emit({ event: "suback", id: cmd.id, error: errorText(err), granted: granted || [] }),
      );
      break;
    case "unsubscribe":
      client.unsubscribe(cmd.topic, (err, packet) =>
        emit({ event: "unsuback", id: cmd.id, error: errorText(err), reasonCode: packet && packet.reasonCode }),
      );
      break;
    case "publish": {
      const options = { ...cmd.options, properties: toMqttProperties(cmd.options && cmd.options.properties) };
      client.publish(cmd.topic, Buffer.from(cmd.payload, "base64"), options, (err, packet) =>
        emit({ event: "published", id: cmd.id, error: errorText(err), reasonCode: (packet && packet.reasonCode) || 0 }),
      );
      break;
    }
    case "end":
      client.end(false, cmd.options || {}, () => emit({ event: "end" }));
      break;
    default:
      emit({ event: "error", message: `unknown op ${cmd.op}` });
  }
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  try {
    handle(JSON.parse(line));
  } catch (err) {
    emit({ event: "error", message: errorText(err) });
  }
});
// The test closing stdin ends the client and the process.
process.stdin.on("end", () => {
  if (client) client.end(true);
  process.exit(0);
});
