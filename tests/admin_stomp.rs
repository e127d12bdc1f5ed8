//! The operators' view of STOMP clients: listed connections, counts by
//! protocol, closing from the API, and the runtime permission table at
//! CONNECT, SEND and SUBSCRIBE.

mod admin_common;
mod common;
mod stomp_common;

use admin_common::{admin, anonymous, get_json, send};
use common::start;
use ferrymq::stomp::codec::Command;
use serde_json::json;
use stomp_common::{Client, addr, frame, header};

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn stomp_clients_are_listed_counted_and_closable() {
    let server = start().await;
    let (mut sub, _) = Client::connect_with(
        &server,
        &[
            ("accept-version", "1.2"),
            ("host", "/"),
            ("client-id", "dashboard"),
        ],
    )
    .await;
    sub.subscribe("/queue/listed", "s1", &[]).await;
    let mut publisher = Client::connect(&server, "1.2").await;
    publisher
        .send_receipted(
            frame(Command::Send, &[("destination", "/queue/listed")]),
            "sent",
        )
        .await;
    sub.message("the message sent over STOMP").await;

    let api = admin(&server);
    let conns = get_json(&api, "/api/connections").await;
    let conns = conns.as_array().expect("list");
    assert_eq!(conns.len(), 2, "{conns:?}");
    let s = conns
        .iter()
        .find(|c| c["client_properties"]["connection_name"] == "dashboard")
        .expect("the subscriber is listed by its client-id");
    assert_eq!(s["protocol"], "STOMP");
    assert_eq!(s["user"], "guest");
    assert_eq!(s["vhost"], "/");
    let consumers = get_json(&api, "/api/consumers").await;
    assert_eq!(consumers.as_array().expect("list").len(), 1, "{consumers}");

    let r = send(&anonymous(&server), "GET", "/metrics", None).await;
    let text = r.text();
    let stomp = |name: &str| sample(&text, &format!("{name}{{protocol=\"stomp\"}}"));
    assert_eq!(stomp("ferrymq_connections"), Some(2.0));
    assert_eq!(stomp("ferrymq_consumers"), Some(1.0));
    let o = get_json(&api, "/api/overview").await;
    assert_eq!(o["protocols"]["stomp"]["connections"], 2, "{o}");

    let name = s["name"].as_str().expect("name");
    let r = send(&api, "DELETE", &format!("/api/connections/{name}"), None).await;
    assert_eq!(r.status, 204);
    let error = sub.error("the ERROR closing the subscriber").await;
    assert_eq!(header(&error, "message"), "Connection forced");
    sub.closed("the broker to close the subscriber").await;
    let left = get_json(&api, "/api/connections").await;
    assert_eq!(left.as_array().expect("list").len(), 1, "{left}");
}

#[tokio::test]
async fn stomp_follows_the_permission_table() {
    let server = start().await;
    let api = admin(&server);
    send(
        &api,
        "PUT",
        "/api/users/web",
        Some(&json!({"password": "pw"})),
    )
    .await;
    let login = [
        ("accept-version", "1.2"),
        ("host", "/"),
        ("login", "web"),
        ("passcode", "pw"),
    ];

    // No permission in the vhost: CONNECT is refused.
    let mut refused = Client::open(addr(&server)).await;
    refused.send(frame(Command::Connect, &login)).await;
    let error = refused.error("the refusal of CONNECT").await;
    assert!(
        String::from_utf8_lossy(&error.body).contains("may not use virtual host '/'"),
        "{error:?}"
    );
    refused.closed("the refused connection to close").await;

    // Write to amq.topic only, read from queues named reports.*.
    let perm = json!({"configure": "^reports\\.", "write": "^amq\\.topic$", "read": "^reports\\."});
    let r = send(&api, "PUT", "/api/permissions/%2F/web", Some(&perm)).await;
    assert!(r.status < 300, "permission set: {}", r.status);

    let mut c = Client::open(addr(&server)).await;
    c.send(frame(Command::Connect, &login)).await;
    assert_eq!(c.recv("CONNECTED").await.command, Command::Connected);
    c.subscribe("/queue/reports.daily", "ok", &[]).await;
    c.send_receipted(
        frame(Command::Send, &[("destination", "/topic/news")]),
        "topic-send",
    )
    .await;
    // The default exchange is not writable for this user.
    c.send(frame(
        Command::Send,
        &[("destination", "/queue/reports.daily"), ("receipt", "r")],
    ))
    .await;
    let error = c.error("the refusal of SEND to the default exchange").await;
    assert_eq!(header(&error, "message"), "access_refused");
    assert!(
        String::from_utf8_lossy(&error.body)
            .contains("write access to exchange 'amq.default' in vhost '/' refused for user 'web'"),
        "{error:?}"
    );
    c.closed("the connection to close after ERROR").await;

    let mut d = Client::open(addr(&server)).await;
    d.send(frame(Command::Connect, &login)).await;
    assert_eq!(d.recv("CONNECTED").await.command, Command::Connected);
    d.send(frame(
        Command::Subscribe,
        &[("destination", "/queue/payroll"), ("id", "x")],
    ))
    .await;
    let error = d
        .error("the refusal of SUBSCRIBE to a queue outside the pattern")
        .await;
    assert!(
        String::from_utf8_lossy(&error.body).contains("read access to queue 'payroll'"),
        "{error:?}"
    );
    let queues = get_json(&api, "/api/queues/%2F").await;
    let names: Vec<&str> = queues
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"payroll"),
        "a refused SUBSCRIBE declares nothing: {names:?}"
    );
}
