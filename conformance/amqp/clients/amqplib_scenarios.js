// amqplib (Node's most used AMQP 0-9-1 client) against the broker, one
// scenario per run: `node amqplib_scenarios.js NAME amqp://guest:guest@HOST:PORT`.
// Exits 0 after printing "ok", or 1 with the failed assertion; every wait
// is bounded and names what it waited for. conformance/amqp/test_amqplib.py
// runs each scenario.
"use strict";

const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const amqp = require("amqplib");

const WAIT_MS = 20000;

function unique(prefix) {
  return `${prefix}-${crypto.randomBytes(6).toString("hex")}`;
}

// Resolves with the promise's value, or fails naming what it waited for.
function within(what, promise, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms / 1000}s waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// The next `n` deliveries to a consumer on `queue`, collected in order.
function deliveries(ch, queue, n, options = {}) {
  const got = [];
  let done;
  const all = new Promise((resolve) => (done = resolve));
  const consuming = ch.consume(
    queue,
    (m) => {
      got.push(m);
      if (got.length === n) done(got);
    },
    options,
  );
  return { consuming, all: () => within(`${n} deliveries from ${queue}`, all) };
}

// An event emitted once by `emitter`, as a promise.
function once(emitter, event, what) {
  return within(what, new Promise((resolve) => emitter.once(event, resolve)));
}

const scenarios = {
  // Declares with arguments, binds, publishes with every property and
  // reads them back; passive checks report the counts.
  async properties_and_arguments(conn) {
    const ch = await conn.createChannel();
    const ex = unique("js-topic");
    await ch.assertExchange(ex, "topic", { durable: false, autoDelete: true });
    const q = (await ch.assertQueue("", { exclusive: true, arguments: { "x-max-priority": 5, "x-message-ttl": 60000 } })).queue;
    assert.match(q, /^amq\.gen-/, "a server-named queue");
    await ch.bindQueue(q, ex, "plant.*.temp");
    const props = {
      contentType: "application/json",
      contentEncoding: "utf-8",
      headers: { site: "north", count: 3, nested: { a: 1 }, list: [1, "two"] },
      deliveryMode: 2,
      priority: 4,
      correlationId: "corr-1",
      replyTo: "replies",
      expiration: "50000",
      messageId: "m-1",
      timestamp: 1700000000,
      type: "reading",
      userId: "guest",
      appId: "sensor",
    };
    assert.ok(ch.publish(ex, "plant.3.temp", Buffer.from('{"t":21.5}'), props));
    const { all } = deliveries(ch, q, 1, { noAck: true });
    const [m] = await all();
    assert.equal(m.content.toString(), '{"t":21.5}');
    assert.equal(m.fields.exchange, ex);
    assert.equal(m.fields.routingKey, "plant.3.temp");
    assert.equal(m.fields.redelivered, false);
    const p = m.properties;
    for (const k of ["contentType", "contentEncoding", "deliveryMode", "priority", "correlationId", "replyTo", "expiration", "messageId", "timestamp", "type", "userId", "appId"]) {
      assert.deepEqual(p[k], props[k], `property ${k}`);
    }
    assert.deepEqual(p.headers, props.headers);
    // Passive declare counts what is ready and who consumes.
    const q2 = (await ch.assertQueue(unique("js-count"), { exclusive: true })).queue;
    for (let i = 0; i < 3; i++) ch.sendToQueue(q2, Buffer.from(String(i)));
    const counted = await within("three messages counted by a passive declare", (async () => {
      for (;;) {
        const c = await ch.checkQueue(q2);
        if (c.messageCount === 3) return c;
      }
    })());
    assert.equal(counted.consumerCount, 0);
    const purged = await ch.purgeQueue(q2);
    assert.equal(purged.messageCount, 3);
  },

  // A confirm channel: every publish is acked; waitForConfirms settles.
  async confirms(conn) {
    const ch = await conn.createConfirmChannel();
    const q = (await ch.assertQueue("", { exclusive: true })).queue;
    const n = 2000;
    let acked = 0;
    for (let i = 0; i < n; i++) {
      ch.sendToQueue(q, Buffer.from(`m${i}`), { persistent: true }, (err) => {
        assert.equal(err, null, `publish ${i} was nacked`);
        acked++;
      });
    }
    await within(`confirms for ${n} publishes`, ch.waitForConfirms());
    assert.equal(acked, n);
    const { all } = deliveries(ch, q, n, { noAck: true });
    const got = await all();
    assert.deepEqual(
      got.map((m) => m.content.toString()),
      Array.from({ length: n }, (_, i) => `m${i}`),
      "in publish order",
    );
  },

  // A mandatory publish nobody is bound to comes back as basic.return 312.
  async mandatory_return(conn) {
    const ch = await conn.createConfirmChannel();
    const returned = once(ch, "return", "the basic.return of an unroutable mandatory publish");
    ch.publish("amq.direct", unique("nobody"), Buffer.from("lost?"), { mandatory: true, messageId: "r-1" });
    const r = await returned;
    assert.equal(r.fields.replyCode, 312);
    assert.equal(r.fields.replyText, "NO_ROUTE");
    assert.equal(r.properties.messageId, "r-1");
    assert.equal(r.content.toString(), "lost?");
    await within("the confirm after the return", ch.waitForConfirms());
  },

  // Prefetch 1, a nack with requeue: the message comes back redelivered,
  // ahead of the rest; ack, reject without requeue.
  async prefetch_nack_requeue(conn) {
    const ch = await conn.createChannel();
    const q = (await ch.assertQueue("", { exclusive: true })).queue;
    for (const b of ["a", "b", "c"]) ch.sendToQueue(q, Buffer.from(b));
    await ch.prefetch(1);
    const seen = [];
    let finish;
    const finished = new Promise((r) => (finish = r));
    await ch.consume(q, (m) => {
      seen.push(`${m.content}${m.fields.redelivered ? "*" : ""}`);
      if (seen.length === 1) ch.nack(m, false, true);
      else if (m.content.toString() === "c") {
        ch.reject(m, false);
        finish();
      } else ch.ack(m);
    });
    await within("a, a again, b, c", finished);
    assert.deepEqual(seen, ["a", "a*", "b", "c"]);
    const left = await ch.checkQueue(q);
    assert.equal(left.messageCount, 0, "rejected without requeue is gone");
  },

  // basic.get, get-empty, and a message left unacked returning on recover.
  async get_and_recover(conn) {
    const ch = await conn.createChannel();
    const q = (await ch.assertQueue("", { exclusive: true })).queue;
    assert.equal(await ch.get(q), false, "get-empty");
    ch.sendToQueue(q, Buffer.from("one"));
    const m = await within("basic.get-ok", (async () => {
      for (;;) {
        const got = await ch.get(q, { noAck: false });
        if (got) return got;
      }
    })());
    assert.equal(m.content.toString(), "one");
    assert.equal(m.fields.messageCount, 0);
    await ch.recover();
    const again = await ch.get(q, { noAck: true });
    assert.ok(again, "the unacked message is back after basic.recover");
    assert.equal(again.fields.redelivered, true);
  },

  // Direct reply-to: an RPC round trip through amq.rabbitmq.reply-to.
  async direct_reply_to(conn) {
    const server = await conn.createChannel();
    const rpc = (await server.assertQueue("", { exclusive: true })).queue;
    await server.consume(rpc, (m) => {
      server.sendToQueue(m.properties.replyTo, Buffer.from(`re: ${m.content}`), { correlationId: m.properties.correlationId });
      server.ack(m);
    });
    const client = await conn.createChannel();
    const { all } = deliveries(client, "amq.rabbitmq.reply-to", 1, { noAck: true });
    client.sendToQueue(rpc, Buffer.from("ping"), { replyTo: "amq.rabbitmq.reply-to", correlationId: "c-9" });
    const [reply] = await all();
    assert.equal(reply.content.toString(), "re: ping");
    assert.equal(reply.properties.correlationId, "c-9");
  },

  // Deleting a queue cancels its consumer: amqplib calls the consumer
  // with null (RabbitMQ's consumer cancel notification).
  async consumer_cancel_notify(conn) {
    const ch = await conn.createChannel();
    const q = (await ch.assertQueue(unique("js-doomed"), { autoDelete: false })).queue;
    let cancelled;
    const cancel = new Promise((r) => (cancelled = r));
    await ch.consume(q, (m) => {
      if (m === null) cancelled();
    });
    const other = await conn.createChannel();
    await other.deleteQueue(q);
    await within("the consumer cancel notification", cancel);
  },

  // Channel errors close the channel only: 404 for a missing queue, 406
  // for a redeclare with other arguments, 403 for a reserved name; the
  // connection and its other channels carry on.
  async channel_errors(conn) {
    const survivor = await conn.createChannel();
    const q = (await survivor.assertQueue("", { exclusive: true })).queue;
    const expectClose = async (what, code, op) => {
      const ch = await conn.createChannel();
      ch.on("error", () => {});
      const closed = once(ch, "close", `the channel closed by ${what}`);
      await assert.rejects(op(ch), (e) => e.code === code, `${what}: expected ${code}`);
      await closed;
    };
    await expectClose("a passive declare of a missing queue", 404, (ch) => ch.checkQueue(unique("missing")));
    const name = unique("js-args");
    await survivor.assertQueue(name, { exclusive: true, arguments: { "x-max-length": 10 } });
    await expectClose("a redeclare with other arguments", 406, (ch) => ch.assertQueue(name, { exclusive: true, arguments: { "x-max-length": 20 } }));
    await expectClose("declaring an amq. exchange", 403, (ch) => ch.assertExchange("amq.mine", "direct"));
    await expectClose("publishing to a missing exchange", 404, async (ch) => {
      ch.publish(unique("no-exchange"), "k", Buffer.from("x"));
      // The error comes with the channel's close; a round trip meets it.
      await ch.checkQueue(q);
    });
    survivor.sendToQueue(q, Buffer.from("still here"));
    const { all } = deliveries(survivor, q, 1, { noAck: true });
    const [m] = await all();
    assert.equal(m.content.toString(), "still here");
  },

  // Exchange-to-exchange bindings, an alternate exchange and a headers
  // exchange with x-match any.
  async exchanges(conn) {
    const ch = await conn.createChannel();
    const front = unique("js-front");
    const back = unique("js-back");
    const fallback = unique("js-fallback");
    const hx = unique("js-headers");
    await ch.assertExchange(fallback, "fanout", { autoDelete: true });
    await ch.assertExchange(front, "direct", { autoDelete: true, alternateExchange: fallback });
    await ch.assertExchange(back, "topic", { autoDelete: true });
    await ch.assertExchange(hx, "headers", { autoDelete: true });
    await ch.bindExchange(back, front, "route");
    const viaBack = (await ch.assertQueue("", { exclusive: true })).queue;
    const viaFallback = (await ch.assertQueue("", { exclusive: true })).queue;
    const viaHeaders = (await ch.assertQueue("", { exclusive: true })).queue;
    await ch.bindQueue(viaBack, back, "#");
    await ch.bindQueue(viaFallback, fallback, "");
    await ch.bindQueue(viaHeaders, hx, "", { "x-match": "any", kind: "alarm", level: "high" });
    ch.publish(front, "route", Buffer.from("bound"));
    ch.publish(front, "other", Buffer.from("unbound"));
    ch.publish(hx, "", Buffer.from("alarm"), { headers: { kind: "alarm" } });
    ch.publish(hx, "", Buffer.from("neither"), { headers: { kind: "note", level: "low" } });
    ch.publish(hx, "", Buffer.from("high"), { headers: { level: "high" } });
    const a = deliveries(ch, viaBack, 1, { noAck: true });
    const b = deliveries(ch, viaFallback, 1, { noAck: true });
    const h = deliveries(ch, viaHeaders, 2, { noAck: true });
    assert.equal((await a.all())[0].content.toString(), "bound");
    assert.equal((await b.all())[0].content.toString(), "unbound");
    assert.deepEqual((await h.all()).map((m) => m.content.toString()), ["alarm", "high"]);
    await ch.unbindExchange(back, front, "route");
    const deleted = await ch.deleteExchange(hx, { ifUnused: false });
    assert.ok(deleted);
  },

  // Dead-lettering on expiry carries the x-death header RabbitMQ writes.
  async dead_letter_x_death(conn) {
    const ch = await conn.createChannel();
    const dlx = unique("js-dlx");
    await ch.assertExchange(dlx, "fanout", { autoDelete: true });
    const dead = (await ch.assertQueue("", { exclusive: true })).queue;
    await ch.bindQueue(dead, dlx, "");
    const src = (await ch.assertQueue(unique("js-src"), { exclusive: true, deadLetterExchange: dlx, messageTtl: 1 })).queue;
    ch.sendToQueue(src, Buffer.from("short-lived"));
    const { all } = deliveries(ch, dead, 1, { noAck: true });
    const [m] = await all();
    assert.equal(m.content.toString(), "short-lived");
    const [death] = m.properties.headers["x-death"];
    assert.equal(death.queue, src);
    assert.equal(death.reason, "expired");
    assert.equal(death.count, 1);
    assert.deepEqual(death["routing-keys"], [src]);
  },

  // channel.flow and a consumer's cancel; a second connection sees the
  // exclusive queue as locked (405).
  async exclusive_locked_elsewhere(conn, url) {
    const ch = await conn.createChannel();
    const q = (await ch.assertQueue(unique("js-mine"), { exclusive: true })).queue;
    const { consumerTag } = await ch.consume(q, () => {}, { consumerTag: "js-tag" });
    assert.equal(consumerTag, "js-tag");
    await ch.cancel("js-tag");
    const other = await within("a second connection", amqp.connect(url));
    try {
      const och = await other.createChannel();
      och.on("error", () => {});
      await assert.rejects(och.checkQueue(q), (e) => e.code === 405, "expected 405 RESOURCE_LOCKED");
    } finally {
      await other.close();
    }
  },

  // A small negotiated frame-max: a 200 KiB body goes out and comes back
  // split into many body frames, byte for byte.
  async frame_max_split(conn, url) {
    const small = await within("a connection with frameMax 4096", amqp.connect(`${url}?frameMax=4096`));
    try {
      const ch = await small.createConfirmChannel();
      const q = (await ch.assertQueue("", { exclusive: true })).queue;
      const body = crypto.randomBytes(200 * 1024);
      ch.sendToQueue(q, body);
      await within("the confirm of the 200 KiB publish", ch.waitForConfirms());
      const { all } = deliveries(ch, q, 1, { noAck: true });
      const [m] = await all();
      assert.ok(m.content.equals(body), "the body came back whole");
    } finally {
      await small.close();
    }
  },

  // Fifty channels on one connection, each with its own queue and traffic.
  async many_channels(conn) {
    const n = 50;
    const channels = await Promise.all(Array.from({ length: n }, () => conn.createChannel()));
    const results = await Promise.all(
      channels.map(async (ch, i) => {
        const q = (await ch.assertQueue("", { exclusive: true })).queue;
        for (let k = 0; k < 20; k++) ch.sendToQueue(q, Buffer.from(`${i}:${k}`));
        const { all } = deliveries(ch, q, 20, { noAck: true });
        return (await all()).map((m) => m.content.toString());
      }),
    );
    results.forEach((got, i) => assert.deepEqual(got, Array.from({ length: 20 }, (_, k) => `${i}:${k}`)));
  },

  // x-overflow reject-publish: past x-max-length the publish is nacked.
  async reject_publish_nacks(conn) {
    const ch = await conn.createConfirmChannel();
    const q = (await ch.assertQueue("", { exclusive: true, arguments: { "x-max-length": 2, "x-overflow": "reject-publish" } })).queue;
    const outcomes = await Promise.all(
      ["a", "b", "c"].map(
        (b) => new Promise((resolve) => ch.sendToQueue(q, Buffer.from(b), {}, (err) => resolve(err ? "nack" : "ack"))),
      ),
    );
    assert.deepEqual(outcomes, ["ack", "ack", "nack"]);
    assert.equal((await ch.checkQueue(q)).messageCount, 2);
  },

  // x-single-active-consumer: the second consumer gets messages only once
  // the first is cancelled.
  async single_active_consumer(conn) {
    const ch = await conn.createChannel();
    const q = (await ch.assertQueue(unique("js-sac"), { exclusive: true, arguments: { "x-single-active-consumer": true } })).queue;
    const first = [];
    const second = [];
    let gotSecond;
    const secondGot = new Promise((r) => (gotSecond = r));
    const { consumerTag } = await ch.consume(q, (m) => first.push(m.content.toString()), { noAck: true });
    await ch.consume(q, (m) => {
      second.push(m.content.toString());
      gotSecond();
    }, { noAck: true });
    ch.sendToQueue(q, Buffer.from("to-first"));
    await within("the active consumer's delivery", (async () => {
      while (first.length === 0) await ch.checkQueue(q);
    })());
    await ch.cancel(consumerTag);
    ch.sendToQueue(q, Buffer.from("to-second"));
    await within("the delivery to the consumer that became active", secondGot);
    assert.deepEqual([first, second], [["to-first"], ["to-second"]]);
  },

  // connection.update-secret is answered (RabbitMQ's credential rotation).
  async update_secret(conn) {
    await within("update-secret-ok", conn.updateSecret(Buffer.from("guest"), "rotation"));
    const ch = await conn.createChannel();
    await ch.checkExchange("amq.direct");
  },
};

async function main() {
  const [name, url] = process.argv.slice(2);
  const scenario = scenarios[name];
  if (!scenario) {
    console.error(`unknown scenario ${name}; known: ${Object.keys(scenarios).join(", ")}`);
    process.exit(2);
  }
  if (!url) {
    console.log(Object.keys(scenarios).join("\n"));
    process.exit(0);
  }
  const conn = await within("the connection to open", amqp.connect(url));
  conn.on("error", (e) => console.error(`connection error: ${e.message}`));
  const closed = new Promise((r) => conn.once("close", r));
  try {
    await within(`scenario ${name}`, scenario(conn, url), 3 * WAIT_MS);
  } finally {
    await within("the connection to close", conn.close().then(() => closed));
  }
  console.log("ok");
}

if (process.argv[2] === "--list") {
  console.log(Object.keys(scenarios).join("\n"));
} else {
  main().then(
    () => process.exit(0),
    (e) => {
      console.error(e && e.stack ? e.stack : e);
      process.exit(1);
    },
  );
}
