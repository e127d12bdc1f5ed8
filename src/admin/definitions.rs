//! Definitions: the broker's topology and users as one JSON document, in
//! RabbitMQ's format, so an export from one broker imports into another.
//!
//! Exported: vhosts, users (with their passwords, since ferrymq keeps
//! passwords rather than hashes: treat the file as a secret), permissions,
//! the exchanges users declared (not the predeclared `amq.*` and default
//! ones), non-exclusive queues, and bindings. Importing applies them in
//! that order; anything that already exists with the same shape is left
//! alone, and the first conflict stops the import with its reason.

use serde_json::{Value as Json, json};

use super::json::{binding_to_json, exchange_to_json, headers_from_json, headers_to_json};
use super::users::parse_tags;
use crate::core::exchange::{BindingSpec, Destination, ExchangeKind, ExchangeSpec};
use crate::core::queue::QueueSpec;
use crate::core::{Broker, Permission, User};

/// The whole broker's definitions.
pub fn export(broker: &Broker) -> Json {
    let mut vhosts = broker.vhosts();
    vhosts.sort_by(|a, b| a.name().cmp(b.name()));
    let users: Vec<Json> = broker
        .users
        .list()
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "password": u.password,
                "tags": u.tags,
                "loopback_only": u.loopback_only,
            })
        })
        .collect();
    let permissions: Vec<Json> = broker
        .users
        .permissions()
        .iter()
        .map(|(u, v, p)| {
            json!({"user": u, "vhost": v, "configure": p.configure, "write": p.write, "read": p.read})
        })
        .collect();
    let mut exchanges = Vec::new();
    let mut queues = Vec::new();
    let mut bindings = Vec::new();
    for v in &vhosts {
        let vname = v.name().as_str();
        for e in v.exchanges() {
            if e.name.as_str().is_empty() || e.name.as_str().starts_with("amq.") {
                continue;
            }
            exchanges.push(exchange_to_json(vname, &e));
        }
        for q in v.queues() {
            let spec = q.spec();
            if spec.exclusive.is_some() {
                continue;
            }
            queues.push(json!({
                "name": spec.name.as_str(),
                "vhost": vname,
                "durable": spec.durable,
                "auto_delete": spec.auto_delete,
                "arguments": headers_to_json(&spec.arguments),
            }));
        }
        for b in v.bindings() {
            if let Destination::Queue(q) = &b.destination
                && v.queue(q.as_str())
                    .is_some_and(|q| q.spec().exclusive.is_some())
            {
                continue;
            }
            let mut j = binding_to_json(vname, &b);
            if let Some(o) = j.as_object_mut() {
                o.remove("properties_key");
            }
            bindings.push(j);
        }
    }
    json!({
        "product_name": "ferrymq",
        "product_version": env!("CARGO_PKG_VERSION"),
        "vhosts": vhosts.iter().map(|v| json!({"name": v.name().as_str()})).collect::<Vec<_>>(),
        "users": users,
        "permissions": permissions,
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    })
}

fn items<'a>(defs: &'a Json, key: &str) -> &'a [Json] {
    defs.get(key)
        .and_then(Json::as_array)
        .map_or(&[], Vec::as_slice)
}

fn text<'a>(j: &'a Json, key: &str) -> Result<&'a str, String> {
    j.get(key)
        .and_then(Json::as_str)
        .ok_or_else(|| format!("'{key}' missing in {j}"))
}

fn flag(j: &Json, key: &str, default: bool) -> bool {
    j.get(key).and_then(Json::as_bool).unwrap_or(default)
}

fn arguments(j: &Json) -> crate::core::Headers {
    j.get("arguments")
        .and_then(Json::as_object)
        .map(headers_from_json)
        .unwrap_or_default()
}

/// Applies a definitions document.
pub fn import(broker: &Broker, defs: &Json) -> Result<(), String> {
    for v in items(defs, "vhosts") {
        broker.add_vhost(text(v, "name")?);
    }
    for u in items(defs, "users") {
        let name = text(u, "name")?;
        let password = match u.get("password").and_then(Json::as_str) {
            Some(p) => p.to_owned(),
            None => match broker.users.get(name) {
                Some(existing) => existing.password,
                None => {
                    return Err(format!(
                        "user '{name}' has no password (password_hash is not supported)"
                    ));
                }
            },
        };
        broker.users.put(User {
            name: name.into(),
            password,
            tags: parse_tags(u.get("tags")),
            loopback_only: flag(u, "loopback_only", false),
            vhosts: Vec::new(),
        });
    }
    for p in items(defs, "permissions") {
        let (user, vhost) = (text(p, "user")?, text(p, "vhost")?);
        let permission =
            Permission::new(text(p, "configure")?, text(p, "write")?, text(p, "read")?)?;
        if broker.vhost(vhost).is_none() {
            return Err(format!(
                "permission for '{user}' names unknown vhost '{vhost}'"
            ));
        }
        if !broker.users.set_permission(user, vhost, permission) {
            return Err(format!("permission names unknown user '{user}'"));
        }
    }
    let vhost = |j: &Json| {
        let name = text(j, "vhost")?;
        broker
            .vhost(name)
            .ok_or_else(|| format!("unknown vhost '{name}'"))
    };
    for e in items(defs, "exchanges") {
        let spec = ExchangeSpec {
            name: text(e, "name")?.into(),
            kind: ExchangeKind::parse(text(e, "type")?).map_err(|e| e.to_string())?,
            durable: flag(e, "durable", true),
            auto_delete: flag(e, "auto_delete", false),
            internal: flag(e, "internal", false),
            arguments: arguments(e),
        };
        vhost(e)?
            .declare_exchange(spec, false)
            .map_err(|e| e.to_string())?;
    }
    for q in items(defs, "queues") {
        let spec = QueueSpec {
            name: text(q, "name")?.into(),
            durable: flag(q, "durable", true),
            exclusive: None,
            auto_delete: flag(q, "auto_delete", false),
            arguments: arguments(q),
        };
        vhost(q)?
            .declare_queue(spec, false, None)
            .map_err(|e| e.to_string())?;
    }
    for b in items(defs, "bindings") {
        let dest = text(b, "destination")?;
        let destination = match text(b, "destination_type")? {
            "queue" => Destination::Queue(dest.into()),
            "exchange" => Destination::Exchange(dest.into()),
            other => return Err(format!("unknown destination_type '{other}'")),
        };
        let spec = BindingSpec {
            source: text(b, "source")?.into(),
            destination,
            key: text(b, "routing_key").unwrap_or("").into(),
            arguments: arguments(b),
        };
        vhost(b)?.bind(spec, None).map_err(|e| e.to_string())?;
    }
    Ok(())
}
