//! Management API handlers for exchanges, queues and bindings, including
//! the publish, get and move-messages endpoints.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::auth::Caller;
use super::http::{
    AdminState, ApiError, ApiResult, body, consumers_json, created, exchange_name, flag,
    no_content, ok, sorted_vhosts, vhost,
};
use super::json::*;
use crate::core::exchange::{BindingSpec, Destination, ExchangeKind, ExchangeSpec};
use crate::core::queue::QueueSpec;
use crate::core::{Message, Settle, VHost};

// ---- exchanges -----------------------------------------------------------

fn exchanges_json(s: &AdminState, only: Option<&str>) -> Vec<Json> {
    sorted_vhosts(s)
        .iter()
        .filter(|v| only.is_none_or(|o| o == v.name().as_str()))
        .flat_map(|v| {
            v.exchanges()
                .iter()
                .map(|e| exchange_to_json(v.name().as_str(), e))
                .collect::<Vec<_>>()
        })
        .collect()
}

pub(super) async fn list_exchanges(State(s): State<AdminState>, _c: Caller) -> ApiResult {
    ok(Json::Array(exchanges_json(&s, None)))
}

pub(super) async fn list_exchanges_in(
    State(s): State<AdminState>,
    _c: Caller,
    Path(v): Path<String>,
) -> ApiResult {
    vhost(&s, &v)?;
    ok(Json::Array(exchanges_json(&s, Some(&v))))
}

pub(super) async fn get_exchange(
    State(s): State<AdminState>,
    _c: Caller,
    Path((v, name)): Path<(String, String)>,
) -> ApiResult {
    let vh = vhost(&s, &v)?;
    let e = vh
        .exchange(exchange_name(&name))
        .ok_or_else(ApiError::not_found)?;
    ok(exchange_to_json(&v, &e))
}

#[derive(Deserialize)]
#[serde(default)]
struct ExchangeBody {
    #[serde(rename = "type")]
    kind: String,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: serde_json::Map<String, Json>,
}

impl Default for ExchangeBody {
    fn default() -> Self {
        Self {
            kind: "direct".into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Default::default(),
        }
    }
}

pub(super) async fn put_exchange(
    State(s): State<AdminState>,
    c: Caller,
    Path((v, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    c.require_admin()?;
    let vh = vhost(&s, &v)?;
    let b: ExchangeBody = body(&raw)?;
    let new = vh.exchange(&name).is_none();
    vh.declare_exchange(
        ExchangeSpec {
            name: name.as_str().into(),
            kind: ExchangeKind::parse(&b.kind)?,
            durable: b.durable,
            auto_delete: b.auto_delete,
            internal: b.internal,
            arguments: headers_from_json(&b.arguments),
        },
        false,
    )?;
    created(new)
}

pub(super) async fn delete_exchange(
    State(s): State<AdminState>,
    c: Caller,
    Path((v, name)): Path<(String, String)>,
    uri: Uri,
) -> ApiResult {
    c.require_admin()?;
    let vh = vhost(&s, &v)?;
    if vh.exchange(exchange_name(&name)).is_none() {
        return Err(ApiError::not_found());
    }
    vh.delete_exchange(exchange_name(&name), flag(&uri, "if-unused"))?;
    no_content()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PublishBody {
    properties: Json,
    routing_key: String,
    payload: String,
    payload_encoding: String,
}

pub(super) async fn publish(
    State(s): State<AdminState>,
    c: Caller,
    Path((v, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    c.require_admin()?;
    let vh = vhost(&s, &v)?;
    let b: PublishBody = body(&raw)?;
    let payload = if b.payload_encoding == "base64" {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(b.payload.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?
    } else {
        b.payload.into_bytes()
    };
    let message = Message::new(
        exchange_name(&name).into(),
        b.routing_key.as_str().into(),
        properties_from_json(&b.properties),
        payload.into(),
    );
    let outcome = vh.publish(message)?;
    ok(json!({"routed": outcome.queues > 0}))
}

// ---- queues --------------------------------------------------------------

fn queues_json(s: &AdminState, only: Option<&str>) -> Vec<Json> {
    sorted_vhosts(s)
        .iter()
        .filter(|v| only.is_none_or(|o| o == v.name().as_str()))
        .flat_map(|v| {
            v.queues()
                .iter()
                .map(|q| queue_to_json(v.name().as_str(), q, &s.node))
                .collect::<Vec<_>>()
        })
        .collect()
}

pub(super) async fn list_queues(State(s): State<AdminState>, _c: Caller) -> ApiResult {
    ok(Json::Array(queues_json(&s, None)))
}

pub(super) async fn list_queues_in(
    State(s): State<AdminState>,
    _c: Caller,
    Path(v): Path<String>,
) -> ApiResult {
    vhost(&s, &v)?;
    ok(Json::Array(queues_json(&s, Some(&v))))
}

pub(super) async fn get_queue(
    State(s): State<AdminState>,
    _c: Caller,
    Path((v, name)): Path<(String, String)>,
) -> ApiResult {
    let vh = vhost(&s, &v)?;
    let q = vh.queue(&name).ok_or_else(ApiError::not_found)?;
    let mut j = queue_to_json(&v, &q, &s.node);
    j["consumer_details"] = Json::Array(
        consumers_json(&s, Some(&v))
            .into_iter()
            .filter(|c| c["queue"]["name"] == name.as_str())
            .collect(),
    );
    ok(j)
}

#[derive(Deserialize)]
#[serde(default)]
struct QueueBody {
    durable: bool,
    auto_delete: bool,
    arguments: serde_json::Map<String, Json>,
}

impl Default for QueueBody {
    fn default() -> Self {
        Self {
            durable: true,
            auto_delete: false,
            arguments: Default::default(),
        }
    }
}

pub(super) async fn put_queue(
    State(s): State<AdminState>,
    c: Caller,
    Path((v, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    c.require_admin()?;
    let vh = vhost(&s, &v)?;
    let b: QueueBody = body(&raw)?;
    if name.is_empty() {
        return Err(ApiError::bad_request(
            "a queue declared over HTTP needs a name",
        ));
    }
    let new = vh.queue(&name).is_none();
    vh.declare_queue(
        QueueSpec {
            name: name.as_str().into(),
            durable: b.durable,
            exclusive: None,
            auto_delete: b.auto_delete,
            arguments: headers_from_json(&b.arguments),
        },
        false,
        None,
    )?;
    created(new)
}

pub(super) async fn delete_queue(
    State(s): State<AdminState>,
    c: Caller,
    Path((v, name)): Path<(String, String)>,
    uri: Uri,
) -> ApiResult {
    c.require_admin()?;
    let vh = vhost(&s, &v)?;
    let q = vh.queue(&name).ok_or_else(ApiError::not_found)?;
    vh.delete_queue(
        &name,
        flag(&uri, "if-unused"),
        flag(&uri, "if-empty"),
        q.spec().exclusive,
    )?;
    no_content()
}

pub(super) async fn purge_queue(
    State(s): State<AdminState>,
    c: Caller,
    Path((v, name)): Path<(String, String)>,
) -> ApiResult {
    c.require_admin()?;
    let vh = vhost(&s, &v)?;
    let q = vh.queue(&name).ok_or_else(ApiError::not_found)?;
    vh.purge_queue(&name, q.spec().exclusive)?;
    no_content()
}

#[derive(Deserialize)]
#[serde(default)]
struct GetBody {
    count: usize,
    ackmode: String,
    encoding: String,
}

impl Default for GetBody {
    fn default() -> Self {
        Self {
            count: 1,
            ackmode: "ack_requeue_true".into(),
            encoding: "auto".into(),
        }
    }
}

pub(super) async fn get_messages(
    State(s): State<AdminState>,
    c: Caller,
    Path((v, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    // Taking messages changes the queue (even when they are requeued they
    // come back marked redelivered), so RabbitMQ treats it as a write.
    c.require_admin()?;
    let vh = vhost(&s, &v)?;
    let q = vh.queue(&name).ok_or_else(ApiError::not_found)?;
    let b: GetBody = body(&raw)?;
    let how = match b.ackmode.as_str() {
        "ack_requeue_true" | "reject_requeue_true" => Settle::Requeue,
        "ack_requeue_false" => Settle::Ack,
        "reject_requeue_false" => Settle::Discard,
        other => return Err(ApiError::bad_request(format!("unknown ackmode '{other}'"))),
    };
    let mut out = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..b.count {
        let (got, after) = q.get(true);
        vh.settle_aftermath(&q, after);
        let Some(got) = got else { break };
        out.push(message_to_json(
            &got.message,
            got.redelivered,
            got.remaining,
            b.encoding == "base64",
        ));
        ids.push(got.id);
    }
    let after = q.settle(&ids, how);
    vh.settle_aftermath(&q, after);
    ok(Json::Array(out))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MoveBody {
    destination: String,
    count: Option<usize>,
}

pub(super) async fn move_messages(
    State(s): State<AdminState>,
    c: Caller,
    Path((v, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    c.require_admin()?;
    let vh = vhost(&s, &v)?;
    let b: MoveBody = body(&raw)?;
    let source = vh.queue(&name).ok_or_else(ApiError::not_found)?;
    if b.destination.is_empty() || b.destination == name {
        return Err(ApiError::bad_request("destination must name another queue"));
    }
    if vh.queue(&b.destination).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no queue '{}' in vhost '{v}'", b.destination),
        ));
    }
    let moved = move_ready(&vh, &source, &b.destination, b.count)?;
    ok(json!({"moved": moved}))
}

/// Moves up to `limit` ready messages (all that are ready now, by
/// default) to the queue `destination` through the default exchange,
/// keeping their properties and headers (`x-death` included): the redrive
/// of a dead-letter queue. Each message is acknowledged in the source only
/// after the destination took it.
pub fn move_ready(
    vh: &VHost,
    source: &Arc<crate::core::queue::Queue>,
    destination: &str,
    limit: Option<usize>,
) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or_else(|| source.depth().ready);
    let mut moved = 0;
    while moved < limit {
        let (got, after) = source.get(true);
        vh.settle_aftermath(source, after);
        let Some(got) = got else { break };
        let m = got.message.rerouted(
            "".into(),
            destination.into(),
            got.message.properties().clone(),
        );
        match vh.publish(m) {
            Ok(outcome) if outcome.queues > 0 => {
                let after = source.settle(&[got.id], Settle::Ack);
                vh.settle_aftermath(source, after);
                moved += 1;
            }
            result => {
                let after = source.settle(&[got.id], Settle::Requeue);
                vh.settle_aftermath(source, after);
                let why = match result {
                    Err(e) => e.to_string(),
                    Ok(_) => format!("queue '{destination}' refused the message"),
                };
                return Err(ApiError::bad_request(format!(
                    "moved {moved} messages, then: {why}"
                )));
            }
        }
    }
    Ok(moved)
}

pub(super) async fn queue_bindings(
    State(s): State<AdminState>,
    _c: Caller,
    Path((v, name)): Path<(String, String)>,
) -> ApiResult {
    let vh = vhost(&s, &v)?;
    vh.queue(&name).ok_or_else(ApiError::not_found)?;
    let mut out = vec![default_binding(&v, &name)];
    out.extend(
        vh.bindings()
            .iter()
            .filter(|b| b.destination == Destination::Queue(name.as_str().into()))
            .map(|b| binding_to_json(&v, b)),
    );
    ok(Json::Array(out))
}

// ---- bindings ------------------------------------------------------------

/// Every queue is bound to the default exchange by its name; RabbitMQ lists
/// that binding too.
fn default_binding(vhost: &str, queue: &str) -> Json {
    json!({
        "source": "",
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": queue,
        "arguments": {},
        "properties_key": queue,
    })
}

fn bindings_json(s: &AdminState, only: Option<&str>) -> Vec<Json> {
    let mut out = Vec::new();
    for v in sorted_vhosts(s) {
        let name = v.name().as_str();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        for q in v.queues() {
            out.push(default_binding(name, q.name().as_str()));
        }
        out.extend(v.bindings().iter().map(|b| binding_to_json(name, b)));
    }
    out
}

pub(super) async fn list_bindings(State(s): State<AdminState>, _c: Caller) -> ApiResult {
    ok(Json::Array(bindings_json(&s, None)))
}

pub(super) async fn list_bindings_in(
    State(s): State<AdminState>,
    _c: Caller,
    Path(v): Path<String>,
) -> ApiResult {
    vhost(&s, &v)?;
    ok(Json::Array(bindings_json(&s, Some(&v))))
}

fn destination(kind: &str, dest: &str) -> Result<Destination, ApiError> {
    match kind {
        "q" => Ok(Destination::Queue(dest.into())),
        "e" => Ok(Destination::Exchange(exchange_name(dest).into())),
        _ => Err(ApiError::not_found()),
    }
}

fn bindings_between(
    vh: &VHost,
    source: &str,
    dest: &Destination,
) -> impl Iterator<Item = BindingSpec> {
    let source = exchange_name(source).to_owned();
    let dest = dest.clone();
    vh.bindings()
        .into_iter()
        .filter(move |b| b.source.as_str() == source && b.destination == dest)
}

pub(super) async fn get_bindings_between(
    State(s): State<AdminState>,
    _c: Caller,
    Path((v, source, kind, dest)): Path<(String, String, String, String)>,
) -> ApiResult {
    let vh = vhost(&s, &v)?;
    let d = destination(&kind, &dest)?;
    ok(Json::Array(
        bindings_between(&vh, &source, &d)
            .map(|b| binding_to_json(&v, &b))
            .collect(),
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BindingBody {
    routing_key: String,
    arguments: serde_json::Map<String, Json>,
}

pub(super) async fn create_binding(
    State(s): State<AdminState>,
    c: Caller,
    Path((v, source, kind, dest)): Path<(String, String, String, String)>,
    raw: Bytes,
) -> ApiResult {
    c.require_admin()?;
    let vh = vhost(&s, &v)?;
    let b: BindingBody = body(&raw)?;
    let spec = BindingSpec {
        source: exchange_name(&source).into(),
        destination: destination(&kind, &dest)?,
        key: b.routing_key.as_str().into(),
        arguments: headers_from_json(&b.arguments),
    };
    vh.bind(spec.clone(), None)?;
    let mut response = StatusCode::CREATED.into_response();
    if let Ok(location) = HeaderValue::from_str(&binding_props_key(&spec)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub(super) async fn get_binding(
    State(s): State<AdminState>,
    _c: Caller,
    Path((v, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let vh = vhost(&s, &v)?;
    let d = destination(&kind, &dest)?;
    let b = bindings_between(&vh, &source, &d)
        .find(|b| binding_props_key(b) == props)
        .ok_or_else(ApiError::not_found)?;
    ok(binding_to_json(&v, &b))
}

pub(super) async fn delete_binding(
    State(s): State<AdminState>,
    c: Caller,
    Path((v, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    c.require_admin()?;
    let vh = vhost(&s, &v)?;
    let d = destination(&kind, &dest)?;
    let b = bindings_between(&vh, &source, &d)
        .find(|b| binding_props_key(b) == props)
        .ok_or_else(ApiError::not_found)?;
    vh.unbind(&b, None)?;
    no_content()
}
