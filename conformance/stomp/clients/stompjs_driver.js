// One @stomp/stompjs client over TCP (@stomp/tcp-wrapper, the documented
// way to use stompjs from Node without WebSocket), remote-controlled by a
// conformance test: commands arrive on stdin and events leave on stdout,
// one JSON object per line, so conformance/stomp/test_stompjs.py drives
// stompjs step by step and waits on its callbacks as events.
//
// Commands:
//   {op: "connect", host, port, versions?, heartbeat: [out, in], headers}
//   {op: "subscribe", id, destination, headers}
//   {op: "unsubscribe", id, headers}
//   {op: "send", destination, headers, body} or binary (base64) for a binary body
//   {op: "ack" | "nack", message (a message event's key), headers}
//   {op: "begin" | "commit" | "abort", transaction}
//   {op: "disconnect"}
// A `receipt` header on any command makes the driver watch for it
// (client.watchForReceipt) and report the RECEIPT.
//
// Events: connected, message (every MESSAGE, whether a subscription's
// callback or onUnhandledMessage had it; `key` names it for ack/nack),
// receipt, stomp_error (onStompError), heartbeat (onHeartbeatReceived),
// heartbeat_lost, disconnected (onDisconnect), close (onWebSocketClose),
// socket_error, failed (a command stompjs threw on), each with `seq`, its
// place in the order of all events. Binary bodies travel as base64.
"use strict";

const readline = require("node:readline");
const { Client, Versions } = require("@stomp/stompjs");
const { TCPWrapper } = require("@stomp/tcp-wrapper");

let client = null;
const messages = new Map();
let nextKey = 1;
let seq = 0;

// Every event is numbered, so a test can tell which came first.
function emit(event) {
  process.stdout.write(JSON.stringify({ ...event, seq: seq++ }) + "\n");
}

function frameEvent(event, frame) {
  return { event, command: frame.command, headers: { ...frame.headers }, body: frame.body };
}

function onMessage(handled) {
  return (message) => {
    const key = `m${nextKey++}`;
    messages.set(key, message);
    emit({
      ...frameEvent("message", message),
      key,
      handled,
      binary: Buffer.from(message.binaryBody).toString("base64"),
    });
  };
}

function watchReceipt(headers) {
  const receipt = headers && headers.receipt;
  if (receipt) client.watchForReceipt(receipt, (frame) => emit({ ...frameEvent("receipt", frame), id: receipt }));
}

function connect(cmd) {
  const [outgoing, incoming] = cmd.heartbeat || [0, 0];
  client = new Client({
    webSocketFactory: () => new TCPWrapper(cmd.host, cmd.port),
    connectHeaders: cmd.headers || {},
    stompVersions: cmd.versions ? new Versions(cmd.versions) : Versions.default,
    heartbeatOutgoing: outgoing,
    heartbeatIncoming: incoming,
    // The test decides when to connect again.
    reconnectDelay: 0,
    connectionTimeout: 20000,
    debug: () => {},
    onConnect: (frame) => emit({ ...frameEvent("connected", frame), version: client.connectedVersion }),
    onStompError: (frame) => emit(frameEvent("stomp_error", frame)),
    onDisconnect: (frame) => emit(frameEvent("disconnected", frame)),
    onWebSocketClose: (evt) => emit({ event: "close", code: evt && evt.code, wasClean: evt && evt.wasClean }),
    onWebSocketError: (evt) => emit({ event: "socket_error", message: String((evt && evt.message) || evt) }),
    onUnhandledMessage: onMessage(false),
    onUnhandledReceipt: (frame) => emit({ ...frameEvent("receipt", frame), id: frame.headers["receipt-id"], unwatched: true }),
    onUnhandledFrame: (frame) => emit(frameEvent("unhandled_frame", frame)),
    onHeartbeatReceived: () => emit({ event: "heartbeat" }),
    onHeartbeatLost: () => emit({ event: "heartbeat_lost" }),
  });
  client.activate();
}

function message(key) {
  const m = messages.get(key);
  if (!m) throw new Error(`no message ${key}`);
  return m;
}

function handle(cmd) {
  const headers = cmd.headers || {};
  switch (cmd.op) {
    case "connect":
      connect(cmd);
      break;
    case "subscribe":
      watchReceipt(headers);
      client.subscribe(cmd.destination, onMessage(true), { ...headers, id: cmd.id });
      break;
    case "unsubscribe":
      watchReceipt(headers);
      client.unsubscribe(cmd.id, headers);
      break;
    case "send":
      watchReceipt(headers);
      if (cmd.binary !== undefined) {
        client.publish({ destination: cmd.destination, headers, binaryBody: new Uint8Array(Buffer.from(cmd.binary, "base64")) });
      } else {
        client.publish({ destination: cmd.destination, headers, body: cmd.body });
      }
      break;
    case "ack":
      watchReceipt(headers);
      message(cmd.message).ack(headers);
      break;
    case "nack":
      watchReceipt(headers);
      message(cmd.message).nack(headers);
      break;
    case "begin":
      client.begin(cmd.transaction);
      break;
    case "commit":
      client.commit(cmd.transaction);
      break;
    case "abort":
      client.abort(cmd.transaction);
      break;
    case "disconnect":
      client.deactivate().then(() => emit({ event: "deactivated" }));
      break;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  let cmd = {};
  try {
    cmd = JSON.parse(line);
    handle(cmd);
  } catch (err) {
    emit({ event: "failed", op: cmd.op, message: String((err && err.message) || err) });
  }
});
// The test closing stdin ends the client and the process.
process.stdin.on("end", () => {
  if (client) client.deactivate({ force: true }).finally(() => process.exit(0));
  else process.exit(0);
});
