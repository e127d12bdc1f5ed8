//! Management API handlers for users, permissions and definitions. All of
//! them need an administrator: they show or change who may do what.

use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::auth::Caller;
use super::http::{AdminState, ApiError, ApiResult, body, created, no_content, ok, vhost};
use crate::core::{Permission, User};

// ---- users and permissions -------------------------------------------------

/// A user as listings show it; the password never leaves the broker
/// except in a definitions export.
fn user_json(u: &User) -> Json {
    json!({"name": u.name, "tags": u.tags, "loopback_only": u.loopback_only})
}

pub(super) async fn list_users(State(s): State<AdminState>, c: Caller) -> ApiResult {
    c.require_admin()?;
    ok(Json::Array(
        s.broker.users.list().iter().map(user_json).collect(),
    ))
}

pub(super) async fn get_user(
    State(s): State<AdminState>,
    c: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    c.require_admin()?;
    let u = s.broker.users.get(&name).ok_or_else(ApiError::not_found)?;
    ok(user_json(&u))
}

/// Tags as RabbitMQ accepts them: a comma-separated string or a list.
pub fn parse_tags(j: Option<&Json>) -> Vec<String> {
    match j {
        Some(Json::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Json::Array(items)) => items
            .iter()
            .filter_map(Json::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

pub(super) async fn put_user(
    State(s): State<AdminState>,
    c: Caller,
    Path(name): Path<String>,
    raw: Bytes,
) -> ApiResult {
    c.require_admin()?;
    let b: Json = body::<Option<Json>>(&raw)?.unwrap_or(json!({}));
    let existing = s.broker.users.get(&name);
    if b.get("password_hash").is_some() && b.get("password").is_none() {
        return Err(ApiError::bad_request(
            "password_hash is not supported; give the password",
        ));
    }
    let password = match (b.get("password").and_then(Json::as_str), &existing) {
        (Some(p), _) => p.to_owned(),
        (None, Some(u)) => u.password.clone(),
        (None, None) => return Err(ApiError::bad_request("a new user needs a password")),
    };
    let user = User {
        name,
        password,
        tags: parse_tags(b.get("tags")),
        loopback_only: b
            .get("loopback_only")
            .and_then(Json::as_bool)
            .or(existing.as_ref().map(|u| u.loopback_only))
            .unwrap_or(false),
        vhosts: Vec::new(),
    };
    s.broker.users.put(user);
    created(existing.is_none())
}

pub(super) async fn delete_user(
    State(s): State<AdminState>,
    c: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    c.require_admin()?;
    if !s.broker.users.delete(&name) {
        return Err(ApiError::not_found());
    }
    s.broker
        .connections
        .close_where(|c| c.user == name, "user deleted");
    no_content()
}

fn permission_json(user: &str, vhost: &str, p: &Permission) -> Json {
    json!({
        "user": user,
        "vhost": vhost,
        "configure": p.configure,
        "write": p.write,
        "read": p.read,
    })
}

fn permissions_where(s: &AdminState, keep: impl Fn(&str, &str) -> bool) -> Json {
    Json::Array(
        s.broker
            .users
            .permissions()
            .iter()
            .filter(|(u, v, _)| keep(u, v))
            .map(|(u, v, p)| permission_json(u, v, p))
            .collect(),
    )
}

pub(super) async fn list_permissions(State(s): State<AdminState>, c: Caller) -> ApiResult {
    c.require_admin()?;
    ok(permissions_where(&s, |_, _| true))
}

pub(super) async fn user_permissions(
    State(s): State<AdminState>,
    c: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    c.require_admin()?;
    s.broker.users.get(&name).ok_or_else(ApiError::not_found)?;
    ok(permissions_where(&s, |u, _| u == name))
}

pub(super) async fn vhost_permissions(
    State(s): State<AdminState>,
    c: Caller,
    Path(v): Path<String>,
) -> ApiResult {
    c.require_admin()?;
    vhost(&s, &v)?;
    ok(permissions_where(&s, |_, vh| vh == v))
}

pub(super) async fn get_permission(
    State(s): State<AdminState>,
    c: Caller,
    Path((v, user)): Path<(String, String)>,
) -> ApiResult {
    c.require_admin()?;
    let p = s
        .broker
        .users
        .permission(&user, &v)
        .ok_or_else(ApiError::not_found)?;
    ok(permission_json(&user, &v, &p))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PermissionBody {
    configure: String,
    write: String,
    read: String,
}

pub(super) async fn put_permission(
    State(s): State<AdminState>,
    c: Caller,
    Path((v, user)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    c.require_admin()?;
    vhost(&s, &v)?;
    let b: PermissionBody = body(&raw)?;
    let p = Permission::new(&b.configure, &b.write, &b.read).map_err(ApiError::bad_request)?;
    let new = s.broker.users.permission(&user, &v).is_none();
    if !s.broker.users.set_permission(&user, &v, p) {
        return Err(ApiError::bad_request(format!("no user '{user}'")));
    }
    created(new)
}

pub(super) async fn delete_permission(
    State(s): State<AdminState>,
    c: Caller,
    Path((v, user)): Path<(String, String)>,
) -> ApiResult {
    c.require_admin()?;
    if s.broker.users.clear_permission(&user, &v) {
        no_content()
    } else {
        Err(ApiError::not_found())
    }
}

// ---- definitions -----------------------------------------------------------

pub(super) async fn export_definitions(State(s): State<AdminState>, c: Caller) -> ApiResult {
    c.require_admin()?;
    ok(super::definitions::export(&s.broker))
}

pub(super) async fn import_definitions(
    State(s): State<AdminState>,
    c: Caller,
    raw: Bytes,
) -> ApiResult {
    c.require_admin()?;
    let defs: Json = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?;
    super::definitions::import(&s.broker, &defs).map_err(ApiError::bad_request)?;
    no_content()
}
