//! `ferrymq ctl` run as a process against an in-process broker.

mod admin_common;
mod common;

use admin_common::{admin, get_json, send};
use common::{connect, start, within};
use ferrymq::server::Server;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;
use serde_json::json;

/// Runs `ferrymq ctl ARGS` as guest; returns (success, stdout, stderr).
async fn ctl(server: &Server, args: &[&str]) -> (bool, String, String) {
    ctl_as(server, "guest", args).await
}

/// Runs `ferrymq ctl ARGS` as guest with `password`.
async fn ctl_as(server: &Server, password: &str, args: &[&str]) -> (bool, String, String) {
    let url = format!("http://{}", server.http.expect("http listener"));
    let out = within(
        &format!("ferrymq ctl {}", args.join(" ")),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ferrymq"))
            .arg("ctl")
            .args(["--url", &url, "--user", "guest", "--password", password])
            .args(args)
            .output(),
    )
    .await
    .expect("ferrymq ctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok(server: &Server, args: &[&str]) -> String {
    let (success, stdout, stderr) = ctl(server, args).await;
    assert!(success, "ferrymq ctl {}: {stderr}", args.join(" "));
    stdout
}

#[tokio::test]
async fn ctl_lists_purges_moves_and_deletes() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    for q in ["parked", "retry"] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    }
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for i in 0..4u8 {
        let c = ch
            .basic_publish(
                "".into(),
                "parked".into(),
                BasicPublishOptions::default(),
                &[i],
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        within("confirm", c).await.expect("confirmed");
    }
    let queues = ok(&server, &["list", "queues"]).await;
    let parked = queues
        .lines()
        .find(|l| l.starts_with("parked"))
        .expect("parked listed");
    assert_eq!(parked.split_whitespace().nth(1), Some("4"), "{queues}");
    assert!(queues.lines().next().expect("header").starts_with("name"));
    let exchanges = ok(&server, &["list", "exchanges"]).await;
    assert!(exchanges.contains("amq.topic"));
    let connections = ok(&server, &["list", "connections"]).await;
    assert!(connections.contains("AMQP 0-9-1"), "{connections}");

    let moved = ok(&server, &["move", "parked", "retry", "--count", "3"]).await;
    assert!(moved.contains("moved 3 messages"), "{moved}");
    let api = admin(&server);
    assert_eq!(
        get_json(&api, "/api/queues/%2F/retry").await["messages_ready"],
        3
    );
    ok(&server, &["purge", "retry"]).await;
    assert_eq!(
        get_json(&api, "/api/queues/%2F/retry").await["messages_ready"],
        0
    );
    ok(&server, &["delete-queue", "retry"]).await;
    assert_eq!(
        send(&api, "GET", "/api/queues/%2F/retry", None)
            .await
            .status,
        404
    );

    let (success, _, stderr) = ctl(&server, &["purge", "missing"]).await;
    assert!(!success);
    assert!(stderr.contains("404"), "{stderr}");

    send(
        &api,
        "PUT",
        "/api/exchanges/%2F/old",
        Some(&json!({"type": "fanout"})),
    )
    .await;
    ok(&server, &["delete-exchange", "old"]).await;
    assert_eq!(
        send(&api, "GET", "/api/exchanges/%2F/old", None)
            .await
            .status,
        404
    );

    let list = get_json(&api, "/api/connections").await;
    let name = list[0]["name"].as_str().expect("a connection").to_owned();
    ok(&server, &["close-connection", &name]).await;
}

#[tokio::test]
async fn ctl_manages_users_permissions_and_definitions() {
    let server = start().await;
    ok(
        &server,
        &["add-user", "ops", "pw", "--tags", "administrator"],
    )
    .await;
    ok(&server, &["set-permissions", "ops", ".*", ".*", ".*"]).await;
    let users = ok(&server, &["list", "users"]).await;
    assert!(
        users
            .lines()
            .any(|l| l.starts_with("ops") && l.contains("administrator")),
        "{users}"
    );
    let perms = ok(&server, &["list", "permissions"]).await;
    assert!(perms.lines().any(|l| l.starts_with("ops")), "{perms}");
    let api = admin(&server);
    send(&api, "PUT", "/api/queues/%2F/kept", Some(&json!({}))).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("defs.json");
    let file = file.to_str().expect("utf-8 path");
    ok(&server, &["export", file]).await;
    let defs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("written")).expect("JSON");
    assert!(
        defs["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .any(|q| q["name"] == "kept")
    );

    let other = start().await;
    ok(&other, &["import", file]).await;
    assert_eq!(
        get_json(&admin(&other), "/api/queues/%2F/kept").await["name"],
        "kept"
    );
    let ops = admin_common::as_user(&other, "ops", "pw");
    get_json(&ops, "/api/users").await;

    ok(&server, &["delete-user", "ops"]).await;
    assert_eq!(send(&api, "GET", "/api/users/ops", None).await.status, 404);
    let (success, _, stderr) = ctl_as(&server, "wrong", &["list", "queues"]).await;
    assert!(!success && stderr.contains("401"), "{stderr}");
}
