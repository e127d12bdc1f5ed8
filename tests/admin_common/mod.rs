//! Helpers for the admin tests: HTTP clients for a broker started by
//! `common::start`, with every call bounded by `common::WAIT`.

#![allow(dead_code)]

use ferrymq::admin::client::{Client, Response};
use ferrymq::server::Server;
use serde_json::Value as Json;

use crate::common::within;

/// A client with no credentials.
pub fn anonymous(server: &Server) -> Client {
    let addr = server.http.expect("http listener is on");
    Client::new(&format!("http://{addr}")).expect("valid URL")
}

/// A client logged in as guest, the default administrator.
pub fn admin(server: &Server) -> Client {
    anonymous(server).with_credentials("guest", "guest")
}

/// A client logged in as `user`.
pub fn as_user(server: &Server, user: &str, password: &str) -> Client {
    anonymous(server).with_credentials(user, password)
}

/// GET, expecting 200, returning the JSON body.
pub async fn get_json(c: &Client, path: &str) -> Json {
    let r = send(c, "GET", path, None).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// Sends a request, failing the test if no response arrives in time.
pub async fn send(c: &Client, method: &str, path: &str, body: Option<&Json>) -> Response {
    let m: hyper::Method = method.parse().expect("a method");
    within(&format!("{method} {path}"), c.request(m, path, body))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}
