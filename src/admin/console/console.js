// The ferrymq console: one page, hash routes, the management API over
// fetch with HTTP Basic credentials kept for this tab only.
"use strict";

const state = { auth: sessionStorage.getItem("ferrymq-auth"), timer: null };
const $ = (id) => document.getElementById(id);

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  }[c]));
}
const enc = encodeURIComponent;
const num = (n) => (typeof n === "number" ? n.toLocaleString("en") : esc(n));
const rate = (r) => (r ?? 0).toFixed(1) + "/s";

async function api(method, path, body) {
  const init = { method, headers: { Authorization: "Basic " + state.auth } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) { showLogin("Login failed"); throw new Error("not logged in"); }
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((data && data.reason) || r.statusText);
  return data;
}

function showLogin(message) {
  stop();
  $("login").hidden = false;
  $("view").innerHTML = "";
  $("login-error").textContent = message || "";
}

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  state.auth = btoa($("login-user").value + ":" + $("login-password").value);
  try {
    const me = await api("GET", "/api/whoami");
    sessionStorage.setItem("ferrymq-auth", state.auth);
    $("login").hidden = true;
    $("who").textContent = me.name + " (" + me.tags.join(", ") + ")";
    route();
  } catch (err) {
    $("login-error").textContent = err.message;
  }
});

function stop() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

function poll(render, ms) {
  stop();
  const tick = () => render().then(() => { $("status").textContent = ""; })
    .catch((err) => { $("status").textContent = err.message; });
  tick();
  state.timer = setInterval(tick, ms || 2000);
}

function table(headers, rows) {
  const head = headers.map(([h, cls]) => `<th class="${cls || ""}">${esc(h)}</th>`).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
}

async function overview() {
  const o = await api("GET", "/api/overview");
  const t = o.object_totals, q = o.queue_totals, m = o.message_stats;
  const tile = (label, value, id) => `<div class="tile" id="${id}">${esc(label)}<b>${value}</b></div>`;
  const protocols = Object.entries(o.protocols).map(([p, s]) =>
    `<tr><td>${esc(p)}</td><td class="num">${num(s.connections)}</td><td class="num">${num(s.publish)}</td><td class="num">${num(s.deliver_get)}</td><td class="num">${num(s.ack)}</td></tr>`);
  $("view").innerHTML = `
    <h2>Overview <small>${esc(o.node)} · ferrymq ${esc(o.product_version)} · HA role: <span id="ha-role">${esc(o.ha_role)}</span></small></h2>
    <div class="tiles">
      ${tile("Publish", rate(m.publish_details.rate), "rate-publish")}
      ${tile("Deliver", rate(m.deliver_get_details.rate), "rate-deliver")}
      ${tile("Ack", rate(m.ack_details.rate), "rate-ack")}
      ${tile("Confirm", rate(m.confirm_details.rate), "rate-confirm")}
      ${tile("Ready", num(q.messages_ready), "total-ready")}
      ${tile("Unacked", num(q.messages_unacknowledged), "total-unacked")}
      ${tile("Connections", num(t.connections), "total-connections")}
      ${tile("Channels", num(t.channels), "total-channels")}
      ${tile("Queues", num(t.queues), "total-queues")}
      ${tile("Consumers", num(t.consumers), "total-consumers")}
    </div>
    <h2>By protocol</h2>
    ${table([["Protocol"], ["Connections", "num"], ["Published", "num"], ["Delivered", "num"], ["Acked", "num"]], protocols)}
    <h2>Alarms</h2>
    <p>Memory: <span class="${o.alarms.memory ? "error" : "ok"}">${o.alarms.memory ? "ALARM" : "ok"}</span> ·
       Disk: <span class="${o.alarms.disk ? "error" : "ok"}">${o.alarms.disk ? "ALARM" : "ok"}</span> ·
       Resident memory ${num(o.process.resident_memory_bytes)} bytes · ${num(o.process.open_fds)} open files</p>`;
}

async function queues() {
  const list = await api("GET", "/api/queues");
  const rows = list.map((q) =>
    `<tr data-queue="${esc(q.name)}"><td><a href="#/queue/${enc(q.vhost)}/${enc(q.name)}">${esc(q.name)}</a></td><td>${esc(q.vhost)}</td>` +
    `<td class="num ready">${num(q.messages_ready)}</td><td class="num">${num(q.messages_unacknowledged)}</td>` +
    `<td class="num">${num(q.consumers)}</td><td>${q.durable ? "durable" : ""}</td></tr>`);
  $("view").innerHTML = `<h2>Queues (${list.length})</h2>` +
    table([["Name"], ["Vhost"], ["Ready", "num"], ["Unacked", "num"], ["Consumers", "num"], ["Features"]], rows);
}

async function connections() {
  const list = await api("GET", "/api/connections");
  const rows = list.map((c) =>
    `<tr><td>${esc(c.name)}</td><td>${esc(c.protocol)}</td><td>${esc(c.user)}</td><td>${esc(c.vhost)}</td>` +
    `<td class="num">${num(c.channels)}</td><td class="num">${num(c.recv_oct)}</td><td class="num">${num(c.send_oct)}</td>` +
    `<td><button data-close="${esc(c.name)}">Close</button></td></tr>`);
  $("view").innerHTML = `<h2>Connections (${list.length})</h2>` +
    table([["Name"], ["Protocol"], ["User"], ["Vhost"], ["Channels", "num"], ["Received", "num"], ["Sent", "num"], [""]], rows);
  for (const b of document.querySelectorAll("[data-close]")) {
    b.onclick = () => api("DELETE", "/api/connections/" + enc(b.dataset.close)).then(connections);
  }
}

async function exchanges() {
  const list = await api("GET", "/api/exchanges");
  const rows = list.map((e) =>
    `<tr><td>${esc(e.name || "(default)")}</td><td>${esc(e.vhost)}</td><td>${esc(e.type)}</td>` +
    `<td>${e.durable ? "durable" : ""}${e.internal ? " internal" : ""}</td></tr>`);
  $("view").innerHTML = `<h2>Exchanges (${list.length})</h2>` +
    table([["Name"], ["Vhost"], ["Type"], ["Features"]], rows);
}

async function queuePage(vhost, name) {
  const base = `/api/queues/${enc(vhost)}/${enc(name)}`;
  const render = async () => {
    const q = await api("GET", base);
    $("queue-ready").textContent = num(q.messages_ready);
    $("queue-unacked").textContent = num(q.messages_unacknowledged);
    $("queue-bytes").textContent = num(q.message_bytes_ready);
    $("queue-consumers").textContent = num(q.consumers);
  };
  $("view").innerHTML = `
    <h2>Queue <span id="queue-name">${esc(name)}</span> in vhost ${esc(vhost)}</h2>
    <div class="tiles">
      <div class="tile">Ready<b id="queue-ready">…</b></div>
      <div class="tile">Unacked<b id="queue-unacked">…</b></div>
      <div class="tile">Ready bytes<b id="queue-bytes">…</b></div>
      <div class="tile">Consumers<b id="queue-consumers">…</b></div>
    </div>
    <div class="actions">
      <button id="purge">Purge</button>
      <form id="move-form"><label>Move messages to queue <input id="move-to" required></label>
        <button id="move" type="submit">Move</button></form>
      <button id="peek">Get 5 messages (requeue)</button>
    </div>
    <p id="queue-result"></p>
    <pre id="messages" hidden></pre>`;
  $("purge").onclick = async () => {
    await api("DELETE", base + "/contents");
    $("queue-result").textContent = "Purged.";
    await render();
  };
  $("move-form").onsubmit = async (e) => {
    e.preventDefault();
    const r = await api("POST", base + "/move", { destination: $("move-to").value });
    $("queue-result").textContent = `Moved ${r.moved} messages.`;
    await render();
  };
  $("peek").onclick = async () => {
    const msgs = await api("POST", base + "/get", { count: 5, ackmode: "ack_requeue_true", encoding: "auto" });
    $("messages").hidden = false;
    $("messages").textContent = JSON.stringify(msgs, null, 2);
    await render();
  };
  poll(render);
}

function route() {
  if (!state.auth) { showLogin(); return; }
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  switch (parts[0]) {
    case "queues": poll(queues); break;
    case "connections": poll(connections, 5000); break;
    case "exchanges": stop(); exchanges().catch((e) => { $("status").textContent = e.message; }); break;
    case "queue": queuePage(decodeURIComponent(parts[1] || "/"), decodeURIComponent(parts.slice(2).join("/"))); break;
    default: poll(overview);
  }
}

window.addEventListener("hashchange", route);
route();
