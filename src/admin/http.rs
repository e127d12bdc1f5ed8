//! The http listener: the management API (RabbitMQ's paths and JSON
//! shapes, so scripts written for it keep working), `/metrics`, and the
//! console at `/`.
//!
//! Every `/api/*` request authenticates with HTTP Basic (auth.rs); reads
//! need a management tag, writes and the user, permission and definition
//! endpoints need `administrator`. `/metrics` and the console's static
//! files are open, as RabbitMQ's Prometheus endpoint and login page are:
//! the console asks for credentials and sends them with each API call.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::auth::Caller;
use super::json::*;
use super::metrics::Metrics;
use super::topology::*;
use super::users::*;
use crate::core::{Broker, ConnectionId, CoreError, Protocol, VHost};

/// Everything a request handler reads.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// The broker.
    pub broker: Arc<Broker>,
    /// The exporter and its handles.
    pub metrics: Arc<Metrics>,
    /// This node's name, as listings show it.
    pub node: Arc<str>,
    /// Bound listeners as (protocol, address), for the overview.
    pub listeners: Arc<Vec<(String, SocketAddr)>>,
    rates: Arc<Mutex<Rates>>,
}

impl AdminState {
    /// State for a broker and its metrics.
    pub fn new(
        broker: Arc<Broker>,
        metrics: Arc<Metrics>,
        listeners: Vec<(String, SocketAddr)>,
    ) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        Self {
            broker,
            metrics,
            node: format!("ferrymq@{host}").into(),
            listeners: Arc::new(listeners),
            rates: Arc::default(),
        }
    }
}

/// A failed request: a status and RabbitMQ's `{"error", "reason"}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
}

impl ApiError {
    /// An error with this status.
    pub fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            error,
            reason: reason.into(),
        }
    }

    pub(super) fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }

    pub(super) fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let (status, error) = match &e {
            CoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            CoreError::AccessRefused(_) => (StatusCode::FORBIDDEN, "access_refused"),
            CoreError::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "not_implemented"),
            CoreError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
            CoreError::PreconditionFailed(_)
            | CoreError::InvalidArgument(_)
            | CoreError::ResourceLocked(_)
            | CoreError::CommandInvalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        Self::new(status, error, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({"error": self.error, "reason": self.reason}));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"ferrymq management\""),
            );
        }
        response
    }
}

pub(super) type ApiResult = Result<Response, ApiError>;

pub(super) fn ok(j: Json) -> ApiResult {
    Ok(axum::Json(j).into_response())
}

pub(super) fn created(was_new: bool) -> ApiResult {
    Ok(if was_new {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
    .into_response())
}

pub(super) fn no_content() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Parses a JSON request body; an empty body is the type's default.
pub(super) fn body<T: DeserializeOwned + Default>(b: &Bytes) -> Result<T, ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

/// A `name=true` query flag (RabbitMQ's `if-empty`, `if-unused`).
pub(super) fn flag(uri: &Uri, name: &str) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|kv| kv == format!("{name}=true")))
}

/// RabbitMQ names the default exchange `amq.default` in URLs.
pub(super) fn exchange_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

pub(super) fn vhost(s: &AdminState, name: &str) -> Result<Arc<VHost>, ApiError> {
    s.broker.vhost(name).ok_or_else(ApiError::not_found)
}

pub(super) fn sorted_vhosts(s: &AdminState) -> Vec<Arc<VHost>> {
    let mut all = s.broker.vhosts();
    all.sort_by(|a, b| a.name().cmp(b.name()));
    all
}

/// The router for the whole http listener.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(console_page))
        .route("/console.js", get(console_script))
        .route("/console.css", get(console_style))
        .route("/metrics", get(metrics))
        .route("/metrics/per-object", get(metrics_per_object))
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/health/checks/alarms", get(health))
        .route("/api/vhosts", get(list_vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(get_vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route("/api/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route("/api/connections", get(list_connections))
        .route(
            "/api/connections/{name}",
            get(get_connection).delete(close_connection),
        )
        .route("/api/channels", get(list_channels))
        .route("/api/consumers", get(list_consumers))
        .route("/api/consumers/{vhost}", get(list_consumers_in))
        .route("/api/exchanges", get(list_exchanges))
        .route("/api/exchanges/{vhost}", get(list_exchanges_in))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(get_exchange).put(put_exchange).delete(delete_exchange),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route("/api/queues", get(list_queues))
        .route("/api/queues/{vhost}", get(list_queues_in))
        .route(
            "/api/queues/{vhost}/{name}",
            get(get_queue).put(put_queue).delete(delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(purge_queue),
        )
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
        .route("/api/queues/{vhost}/{name}/move", post(move_messages))
        .route("/api/queues/{vhost}/{name}/bindings", get(queue_bindings))
        .route("/api/bindings", get(list_bindings))
        .route("/api/bindings/{vhost}", get(list_bindings_in))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}",
            get(get_bindings_between).post(create_binding),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(get_binding).delete(delete_binding),
        )
        .route("/api/users", get(list_users))
        .route(
            "/api/users/{name}",
            get(get_user).put(put_user).delete(delete_user),
        )
        .route("/api/users/{name}/permissions", get(user_permissions))
        .route("/api/permissions", get(list_permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(get_permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route(
            "/api/definitions",
            get(export_definitions).post(import_definitions),
        )
        .with_state(state)
}

/// Serves the http listener until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "http listener stopped");
    }
}

// ---- console and metrics -------------------------------------------------

async fn console_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("console/index.html"),
    )
        .into_response()
}

async fn console_script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console/console.js"),
    )
        .into_response()
}

async fn console_style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console/console.css"),
    )
        .into_response()
}

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(s): State<AdminState>) -> Response {
    let text = s.metrics.render(&s.broker, false);
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response()
}

async fn metrics_per_object(State(s): State<AdminState>) -> Response {
    let text = s.metrics.render(&s.broker, true);
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response()
}

// ---- overview ------------------------------------------------------------

/// Message totals the overview reports rates for, in this order.
const RATE_KEYS: [&str; 7] = [
    "publish",
    "confirm",
    "deliver_get",
    "redeliver",
    "ack",
    "return_unroutable",
    "drop_unroutable",
];

#[derive(Debug, Default)]
struct Rates {
    last: Option<(Instant, [u64; 7])>,
    rates: [f64; 7],
}

impl Rates {
    /// Rates per second since the last sample at least a second old.
    fn update(&mut self, now: Instant, totals: [u64; 7]) -> [f64; 7] {
        match self.last {
            Some((then, prev)) => {
                let dt = now.duration_since(then).as_secs_f64();
                if dt >= 1.0 {
                    for i in 0..7 {
                        self.rates[i] = totals[i].saturating_sub(prev[i]) as f64 / dt;
                    }
                    self.last = Some((now, totals));
                }
            }
            None => self.last = Some((now, totals)),
        }
        self.rates
    }
}

fn message_totals(broker: &Broker, p: Protocol) -> [u64; 7] {
    let s = broker.stats.protocol(p);
    let unroutable = s.unroutable.get();
    let returned = s.returned.get();
    [
        s.published.get(),
        s.confirmed.get(),
        s.delivered.get(),
        s.redelivered.get(),
        s.acknowledged.get(),
        returned,
        unroutable.saturating_sub(returned),
    ]
}

fn stats_json(totals: &[u64; 7], rates: Option<&[f64; 7]>) -> Json {
    let mut o = serde_json::Map::new();
    for (i, k) in RATE_KEYS.iter().enumerate() {
        o.insert((*k).into(), json!(totals[i]));
        if let Some(r) = rates {
            o.insert(format!("{k}_details"), json!({"rate": r[i]}));
        }
    }
    Json::Object(o)
}

async fn overview(State(s): State<AdminState>, _c: Caller) -> ApiResult {
    let b = &s.broker;
    let mut totals = [0u64; 7];
    let mut protocols = serde_json::Map::new();
    let connections = b.connections.list();
    for p in Protocol::ALL {
        let t = message_totals(b, p);
        for i in 0..7 {
            totals[i] += t[i];
        }
        let mine: Vec<_> = connections
            .iter()
            .filter(|c| c.info.protocol == p)
            .collect();
        let mut entry = stats_json(&t, None);
        entry["connections"] = json!(mine.len());
        protocols.insert(p.as_str().into(), entry);
    }
    let rates = s
        .rates
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .update(Instant::now(), totals);
    let (mut queues, mut exchanges, mut consumers) = (0, 0, 0);
    let (mut ready, mut unacked) = (0, 0);
    for v in b.vhosts() {
        exchanges += v.exchanges().len();
        for q in v.queues() {
            let d = q.depth();
            queues += 1;
            consumers += d.consumers;
            ready += d.ready;
            unacked += d.unacked;
        }
    }
    let channels: usize = connections.iter().map(|c| c.lanes.len()).sum();
    let alarms = b.alarms.current();
    let process = super::metrics::read_process();
    let listeners: Vec<Json> = s
        .listeners
        .iter()
        .map(|(p, a)| json!({"protocol": p, "ip_address": a.ip().to_string(), "port": a.port()}))
        .collect();
    ok(json!({
        "product_name": "ferrymq",
        "product_version": env!("CARGO_PKG_VERSION"),
        "management_version": env!("CARGO_PKG_VERSION"),
        "cluster_name": "ferrymq",
        "node": &*s.node,
        "ha_role": "standalone",
        "object_totals": {
            "connections": connections.len(),
            "channels": channels,
            "exchanges": exchanges,
            "queues": queues,
            "consumers": consumers,
            "vhosts": b.vhosts().len(),
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "message_stats": stats_json(&totals, Some(&rates)),
        "protocols": protocols,
        "alarms": {"memory": alarms.memory, "disk": alarms.disk},
        "process": {
            "resident_memory_bytes": process.resident_bytes,
            "open_fds": process.open_fds,
            "max_fds": process.max_fds,
        },
        "listeners": listeners,
    }))
}

async fn whoami(c: Caller) -> ApiResult {
    ok(json!({"name": c.user.name, "tags": c.user.tags}))
}

/// RabbitMQ's alarms health check: 200 without alarms, 503 with any.
async fn health(State(s): State<AdminState>, _c: Caller) -> ApiResult {
    let alarms = s.broker.alarms.current();
    if alarms.any() {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "failed", "reason": alarms.reason()})),
        )
            .into_response());
    }
    ok(json!({"status": "ok"}))
}

// ---- vhosts --------------------------------------------------------------

fn vhost_json(v: &VHost) -> Json {
    let (mut ready, mut unacked) = (0, 0);
    for q in v.queues() {
        let d = q.depth();
        ready += d.ready;
        unacked += d.unacked;
    }
    json!({
        "name": v.name().as_str(),
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    })
}

async fn list_vhosts(State(s): State<AdminState>, _c: Caller) -> ApiResult {
    ok(Json::Array(
        sorted_vhosts(&s).iter().map(|v| vhost_json(v)).collect(),
    ))
}

async fn get_vhost(State(s): State<AdminState>, _c: Caller, Path(v): Path<String>) -> ApiResult {
    let vh = vhost(&s, &v)?;
    ok(vhost_json(&vh))
}

async fn put_vhost(State(s): State<AdminState>, c: Caller, Path(v): Path<String>) -> ApiResult {
    c.require_admin()?;
    let new = s.broker.vhost(&v).is_none();
    s.broker.add_vhost(&v);
    created(new)
}

async fn delete_vhost(State(s): State<AdminState>, c: Caller, Path(v): Path<String>) -> ApiResult {
    c.require_admin()?;
    if s.broker.remove_vhost(&v) {
        no_content()
    } else {
        Err(ApiError::not_found())
    }
}

// ---- connections and channels -------------------------------------------

fn find_connection(
    s: &AdminState,
    name: &str,
) -> Result<crate::core::connections::ConnectionSnapshot, ApiError> {
    s.broker
        .connections
        .list()
        .into_iter()
        .find(|c| connection_name(c) == name || c.info.id.0.to_string() == name)
        .ok_or_else(ApiError::not_found)
}

async fn list_connections(State(s): State<AdminState>, _c: Caller) -> ApiResult {
    let all = s.broker.connections.list();
    ok(Json::Array(
        all.iter().map(|c| connection_to_json(c, &s.node)).collect(),
    ))
}

async fn vhost_connections(
    State(s): State<AdminState>,
    _c: Caller,
    Path(v): Path<String>,
) -> ApiResult {
    vhost(&s, &v)?;
    let all = s.broker.connections.list();
    ok(Json::Array(
        all.iter()
            .filter(|c| c.info.vhost.as_str() == v)
            .map(|c| connection_to_json(c, &s.node))
            .collect(),
    ))
}

async fn get_connection(
    State(s): State<AdminState>,
    _c: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    ok(connection_to_json(&find_connection(&s, &name)?, &s.node))
}

async fn close_connection(
    State(s): State<AdminState>,
    c: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    c.require_admin()?;
    let conn = find_connection(&s, &name)?;
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    s.broker.connections.close(conn.info.id, reason);
    no_content()
}

async fn list_channels(State(s): State<AdminState>, _c: Caller) -> ApiResult {
    let mut out = Vec::new();
    for c in s.broker.connections.list() {
        for lane in &c.lanes {
            out.push(json!({
                "name": format!("{} ({})", connection_name(&c), lane.number),
                "number": lane.number,
                "node": &*s.node,
                "connection_details": connection_details(&c),
                "user": c.info.user,
                "vhost": c.info.vhost.as_str(),
                "protocol": c.info.protocol.as_str(),
                "consumer_count": lane.consumers,
                "prefetch_count": lane.prefetch,
                "confirm": lane.confirm,
                "transactional": lane.transactional,
                "state": "running",
            }));
        }
    }
    ok(Json::Array(out))
}

pub(super) fn consumers_json(s: &AdminState, only: Option<&str>) -> Vec<Json> {
    let connections: std::collections::HashMap<ConnectionId, _> = s
        .broker
        .connections
        .list()
        .into_iter()
        .map(|c| (c.info.id, c))
        .collect();
    let mut out = Vec::new();
    for v in sorted_vhosts(s) {
        if only.is_some_and(|o| o != v.name().as_str()) {
            continue;
        }
        for q in v.queues() {
            for c in q.consumers() {
                let details = connections.get(&c.owner).map(connection_details);
                out.push(json!({
                    "consumer_tag": c.tag.as_str(),
                    "queue": {"name": q.name().as_str(), "vhost": v.name().as_str()},
                    "channel_details": details,
                    "ack_required": c.manual_ack,
                    "prefetch_count": c.prefetch,
                    "exclusive": c.exclusive,
                    "priority": c.priority,
                    "messages_unacknowledged": c.unacked,
                    "active": true,
                }));
            }
        }
    }
    out
}

async fn list_consumers(State(s): State<AdminState>, _c: Caller) -> ApiResult {
    ok(Json::Array(consumers_json(&s, None)))
}

async fn list_consumers_in(
    State(s): State<AdminState>,
    _c: Caller,
    Path(v): Path<String>,
) -> ApiResult {
    vhost(&s, &v)?;
    ok(Json::Array(consumers_json(&s, Some(&v))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_over_at_least_a_second() {
        let mut r = Rates::default();
        let t0 = Instant::now();
        assert_eq!(r.update(t0, [0; 7])[0], 0.0);
        let t1 = t0 + std::time::Duration::from_millis(500);
        assert_eq!(r.update(t1, [10; 7])[0], 0.0, "too soon to sample");
        let t2 = t0 + std::time::Duration::from_secs(2);
        assert_eq!(r.update(t2, [40; 7])[0], 20.0);
    }
}
