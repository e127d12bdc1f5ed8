//! The management API over real HTTP against an in-process broker, with
//! lapin on the AMQP side.

mod admin_common;
mod common;

use admin_common::{admin, anonymous, as_user, get_json, send};
use common::{connect, start, within};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

async fn declare(ch: &lapin::Channel, name: &str, args: FieldTable) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap_or_else(|e| panic!("declare {name}: {e}"));
}

async fn publish_confirmed(ch: &lapin::Channel, queue: &str, bodies: &[&str]) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    for b in bodies {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                b.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        assert!(
            within("publisher confirm", confirm)
                .await
                .expect("confirm")
                .is_ack()
        );
    }
}

#[tokio::test]
async fn api_without_credentials_or_with_wrong_ones_is_401_with_a_challenge() {
    let server = start().await;
    for path in ["/api/overview", "/api/queues", "/api/definitions"] {
        let r = send(&anonymous(&server), "GET", path, None).await;
        assert_eq!(r.status, 401, "{path}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Basic")),
            "{path} challenges for Basic credentials"
        );
        assert_eq!(r.json()["error"], "not_authorized");
    }
    let wrong = as_user(&server, "guest", "nope");
    assert_eq!(send(&wrong, "GET", "/api/overview", None).await.status, 401);
    let r = send(
        &anonymous(&server),
        "PUT",
        "/api/queues/%2F/q",
        Some(&json!({})),
    )
    .await;
    assert_eq!(r.status, 401, "writes need credentials too");
    let me = get_json(&admin(&server), "/api/whoami").await;
    assert_eq!(me["name"], "guest");
    assert_eq!(me["tags"], json!(["administrator"]));
    let health = get_json(&admin(&server), "/api/health/checks/alarms").await;
    assert_eq!(health["status"], "ok");
}

#[tokio::test]
async fn non_administrators_read_but_get_403_on_writes_and_secrets() {
    let server = start().await;
    let api = admin(&server);
    for (name, tags) in [("watcher", "management"), ("plain", "")] {
        let r = send(
            &api,
            "PUT",
            &format!("/api/users/{name}"),
            Some(&json!({"password": "pw", "tags": tags})),
        )
        .await;
        assert_eq!(r.status, 201, "user {name} created: {}", r.text());
    }
    let watcher = as_user(&server, "watcher", "pw");
    get_json(&watcher, "/api/overview").await;
    get_json(&watcher, "/api/queues").await;
    for (method, path, body) in [
        ("PUT", "/api/queues/%2F/q", Some(json!({}))),
        ("DELETE", "/api/queues/%2F/q", None),
        ("PUT", "/api/users/x", Some(json!({"password": "p"}))),
        ("GET", "/api/users", None),
        ("GET", "/api/permissions", None),
        ("GET", "/api/definitions", None),
        ("PUT", "/api/vhosts/v", None),
    ] {
        let r = send(&watcher, method, path, body.as_ref()).await;
        assert_eq!(r.status, 403, "{method} {path} by a management user");
        assert_eq!(r.json()["error"], "not_authorised");
    }
    let plain = as_user(&server, "plain", "pw");
    let r = send(&plain, "GET", "/api/overview", None).await;
    assert_eq!(r.status, 403, "a user without a management tag");
    assert!(
        get_json(&api, "/api/queues")
            .await
            .as_array()
            .expect("list")
            .is_empty(),
        "the refused declare did nothing"
    );
}

#[tokio::test]
async fn overview_counts_connections_queues_and_messages_by_protocol() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "work", FieldTable::default()).await;
    publish_confirmed(&ch, "work", &["a", "b", "c"]).await;
    let o = get_json(&admin(&server), "/api/overview").await;
    assert_eq!(o["product_name"], "ferrymq");
    assert_eq!(o["ha_role"], "standalone");
    assert_eq!(o["object_totals"]["connections"], 1);
    assert_eq!(o["object_totals"]["channels"], 1);
    assert_eq!(o["object_totals"]["queues"], 1);
    assert_eq!(o["queue_totals"]["messages_ready"], 3);
    assert_eq!(o["message_stats"]["publish"], 3);
    assert_eq!(o["message_stats"]["confirm"], 3);
    assert!(o["message_stats"]["publish_details"]["rate"].is_number());
    assert_eq!(o["protocols"]["amqp"]["connections"], 1);
    assert_eq!(o["protocols"]["amqp"]["publish"], 3);
    let listeners = o["listeners"].as_array().expect("listeners");
    assert!(listeners.iter().any(|l| l["protocol"] == "amqp"));
    assert!(listeners.iter().any(|l| l["protocol"] == "http"));
}

#[tokio::test]
async fn queues_are_declared_listed_read_purged_and_deleted_over_http() {
    let server = start().await;
    let api = admin(&server);
    let body = json!({"durable": true, "arguments": {"x-max-length": 100}});
    assert_eq!(
        send(&api, "PUT", "/api/queues/%2F/orders", Some(&body))
            .await
            .status,
        201
    );
    assert_eq!(
        send(&api, "PUT", "/api/queues/%2F/orders", Some(&body))
            .await
            .status,
        204
    );
    let clash = json!({"durable": false});
    let r = send(&api, "PUT", "/api/queues/%2F/orders", Some(&clash)).await;
    assert_eq!(r.status, 400, "an inequivalent redeclare: {}", r.text());
    for i in 0..3 {
        let publish = json!({
            "routing_key": "orders",
            "payload": format!("order {i}"),
            "payload_encoding": "string",
            "properties": {"headers": {"n": i}, "delivery_mode": 2},
        });
        let r = send(
            &api,
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(&publish),
        )
        .await;
        assert_eq!(r.json(), json!({"routed": true}));
    }
    let q = get_json(&api, "/api/queues/%2F/orders").await;
    assert_eq!(q["messages_ready"], 3);
    assert_eq!(q["message_bytes_ready"], 21);
    assert_eq!(q["arguments"]["x-max-length"], 100);
    let listed = get_json(&api, "/api/queues/%2F").await;
    assert_eq!(listed[0]["name"], "orders");
    assert_eq!(get_json(&api, "/api/queues").await, listed);

    let get = json!({"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto"});
    let got = send(&api, "POST", "/api/queues/%2F/orders/get", Some(&get))
        .await
        .json();
    assert_eq!(got.as_array().expect("messages").len(), 2);
    assert_eq!(got[0]["payload"], "order 0");
    assert_eq!(got[0]["properties"]["headers"]["n"], 0);
    assert_eq!(got[0]["properties"]["delivery_mode"], 2);
    let again = send(&api, "POST", "/api/queues/%2F/orders/get", Some(&get))
        .await
        .json();
    assert_eq!(again[0]["payload"], "order 0", "requeued in place");
    assert_eq!(again[0]["redelivered"], true);
    let take = json!({"count": 1, "ackmode": "ack_requeue_false"});
    send(&api, "POST", "/api/queues/%2F/orders/get", Some(&take)).await;
    assert_eq!(
        get_json(&api, "/api/queues/%2F/orders").await["messages_ready"],
        2
    );

    let r = send(&api, "DELETE", "/api/queues/%2F/orders/contents", None).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        get_json(&api, "/api/queues/%2F/orders").await["messages_ready"],
        0
    );
    assert_eq!(
        send(&api, "DELETE", "/api/queues/%2F/orders", None)
            .await
            .status,
        204
    );
    assert_eq!(
        send(&api, "GET", "/api/queues/%2F/orders", None)
            .await
            .status,
        404
    );
    assert_eq!(
        send(&api, "GET", "/api/queues/nowhere", None).await.status,
        404
    );
}

#[tokio::test]
async fn move_redrives_a_dead_letter_queue_and_keeps_x_death() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "jobs.dlq", FieldTable::default()).await;
    let dlx = table(&[
        (
            "x-dead-letter-exchange",
            AMQPValue::LongString(LongString::from("")),
        ),
        (
            "x-dead-letter-routing-key",
            AMQPValue::LongString(LongString::from("jobs.dlq")),
        ),
    ]);
    declare(&ch, "jobs", dlx).await;
    publish_confirmed(&ch, "jobs", &["j1", "j2"]).await;
    let mut consumer = ch
        .basic_consume(
            "jobs".into(),
            "worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for _ in 0..2 {
        let d = within("a job", consumer.next())
            .await
            .expect("consumer open")
            .expect("delivery");
        d.reject(BasicRejectOptions { requeue: false })
            .await
            .expect("reject");
    }
    ch.basic_cancel("worker".into(), BasicCancelOptions::default())
        .await
        .expect("cancel: the rejects before it are processed");
    let api = admin(&server);
    assert_eq!(
        get_json(&api, "/api/queues/%2F/jobs.dlq").await["messages_ready"],
        2
    );

    let r = send(
        &api,
        "POST",
        "/api/queues/%2F/jobs.dlq/move",
        Some(&json!({"destination": "nowhere"})),
    )
    .await;
    assert_eq!(r.status, 404, "moving to a missing queue");
    let r = send(
        &api,
        "POST",
        "/api/queues/%2F/jobs.dlq/move",
        Some(&json!({"destination": "jobs.dlq"})),
    )
    .await;
    assert_eq!(r.status, 400, "moving a queue into itself");
    let r = send(
        &api,
        "POST",
        "/api/queues/%2F/jobs.dlq/move",
        Some(&json!({"destination": "jobs"})),
    )
    .await;
    assert_eq!(r.json(), json!({"moved": 2}));
    assert_eq!(
        get_json(&api, "/api/queues/%2F/jobs.dlq").await["messages_ready"],
        0
    );
    let got = send(
        &api,
        "POST",
        "/api/queues/%2F/jobs/get",
        Some(&json!({"count": 5, "ackmode": "ack_requeue_true"})),
    )
    .await
    .json();
    assert_eq!(got.as_array().expect("messages").len(), 2);
    assert_eq!(got[0]["payload"], "j1");
    let death = &got[0]["properties"]["headers"]["x-death"][0];
    assert_eq!(death["queue"], "jobs");
    assert_eq!(death["reason"], "rejected");
}

#[tokio::test]
async fn exchanges_and_bindings_are_declared_listed_and_removed_over_http() {
    let server = start().await;
    let api = admin(&server);
    let x = json!({"type": "topic", "durable": true});
    assert_eq!(
        send(&api, "PUT", "/api/exchanges/%2F/events", Some(&x))
            .await
            .status,
        201
    );
    let bad = json!({"type": "nonsense"});
    assert_eq!(
        send(&api, "PUT", "/api/exchanges/%2F/odd", Some(&bad))
            .await
            .status,
        400
    );
    send(&api, "PUT", "/api/queues/%2F/audit", Some(&json!({}))).await;
    let e = get_json(&api, "/api/exchanges/%2F/events").await;
    assert_eq!(e["type"], "topic");
    let all = get_json(&api, "/api/exchanges/%2F").await;
    let names: Vec<&str> = all
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(names.contains(&"") && names.contains(&"amq.topic") && names.contains(&"events"));
    assert_eq!(
        get_json(&api, "/api/exchanges/%2F/amq.default").await["name"],
        ""
    );

    let r = send(
        &api,
        "POST",
        "/api/bindings/%2F/e/events/q/audit",
        Some(&json!({"routing_key": "order.*"})),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("location"), Some("order.*"));
    let between = get_json(&api, "/api/bindings/%2F/e/events/q/audit").await;
    assert_eq!(between[0]["routing_key"], "order.*");
    let one = get_json(&api, "/api/bindings/%2F/e/events/q/audit/order.*").await;
    assert_eq!(one["destination"], "audit");
    let listed = get_json(&api, "/api/bindings/%2F").await;
    assert!(
        listed
            .as_array()
            .expect("list")
            .iter()
            .any(|b| b["source"] == "events")
    );
    assert_eq!(get_json(&api, "/api/bindings").await, listed);
    let qb = get_json(&api, "/api/queues/%2F/audit/bindings").await;
    assert_eq!(qb.as_array().expect("list").len(), 2, "default + events");

    let publish = |key: &str| json!({"routing_key": key, "payload": "x", "payload_encoding": "string", "properties": {}});
    let r = send(
        &api,
        "POST",
        "/api/exchanges/%2F/events/publish",
        Some(&publish("order.new")),
    )
    .await;
    assert_eq!(r.json(), json!({"routed": true}));
    let r = send(
        &api,
        "DELETE",
        "/api/bindings/%2F/e/events/q/audit/order.*",
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    let r = send(
        &api,
        "POST",
        "/api/exchanges/%2F/events/publish",
        Some(&publish("order.new")),
    )
    .await;
    assert_eq!(r.json(), json!({"routed": false}));
    assert_eq!(
        send(&api, "DELETE", "/api/exchanges/%2F/events", None)
            .await
            .status,
        204
    );
    assert_eq!(
        send(&api, "GET", "/api/exchanges/%2F/events", None)
            .await
            .status,
        404
    );
    let r = send(&api, "DELETE", "/api/exchanges/%2F/amq.topic", None).await;
    assert_eq!(r.status, 403, "predeclared exchanges stay");
}

#[tokio::test]
async fn connections_channels_and_consumers_are_listed_and_a_connection_can_be_closed() {
    let server = start().await;
    let conn = Connection::connect(
        &common::uri(&server),
        ConnectionProperties::default().with_connection_name("billing".into()),
    )
    .await
    .expect("lapin connects");
    let mut events = conn.events_listener();
    let ch1 = conn.create_channel().await.expect("channel 1");
    let ch2 = conn.create_channel().await.expect("channel 2");
    declare(&ch1, "invoices", FieldTable::default()).await;
    ch2.basic_qos(7, BasicQosOptions::default())
        .await
        .expect("qos");
    let _consumer = ch2
        .basic_consume(
            "invoices".into(),
            "biller".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let api = admin(&server);
    let conns = get_json(&api, "/api/connections").await;
    let c = &conns[0];
    assert_eq!(c["protocol"], "AMQP 0-9-1");
    assert_eq!(c["user"], "guest");
    assert_eq!(c["vhost"], "/");
    assert_eq!(c["channels"], 2);
    assert_eq!(c["client_properties"]["connection_name"], "billing");
    assert!(c["recv_oct"].as_u64().expect("bytes") > 0);
    let name = c["name"].as_str().expect("name").to_owned();
    assert_eq!(
        get_json(&api, &format!("/api/connections/{name}")).await["name"],
        name.as_str()
    );
    assert_eq!(get_json(&api, "/api/vhosts/%2F/connections").await, conns);

    let channels = get_json(&api, "/api/channels").await;
    let channels = channels.as_array().expect("list");
    assert_eq!(channels.len(), 2);
    let consuming = channels
        .iter()
        .find(|c| c["consumer_count"] == 1)
        .expect("the consuming channel");
    assert_eq!(consuming["prefetch_count"], 7);
    assert_eq!(consuming["connection_details"]["name"], name.as_str());

    let consumers = get_json(&api, "/api/consumers").await;
    assert_eq!(consumers[0]["consumer_tag"], "biller");
    assert_eq!(consumers[0]["queue"]["name"], "invoices");
    assert_eq!(consumers[0]["prefetch_count"], 7);
    assert_eq!(consumers[0]["channel_details"]["name"], name.as_str());
    assert_eq!(get_json(&api, "/api/consumers/%2F").await, consumers);
    assert_eq!(
        get_json(&api, "/api/queues/%2F/invoices").await["consumer_details"][0]["consumer_tag"],
        "biller"
    );

    let r = send(&api, "DELETE", &format!("/api/connections/{name}"), None).await;
    assert_eq!(r.status, 204);
    within("lapin to see the connection closed", async {
        while let Some(e) = events.next().await {
            if let lapin::Event::Error(_) = e {
                return;
            }
        }
    })
    .await;
    let left = get_json(&api, "/api/connections").await;
    assert!(left.as_array().expect("list").is_empty(), "{left}");
    assert_eq!(
        send(&api, "DELETE", "/api/connections/12345", None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn vhosts_users_and_permissions_govern_amqp_access() {
    let server = start().await;
    let api = admin(&server);
    assert_eq!(
        send(&api, "PUT", "/api/vhosts/apps", None).await.status,
        201
    );
    assert_eq!(
        send(&api, "PUT", "/api/vhosts/apps", None).await.status,
        204
    );
    let vhosts = get_json(&api, "/api/vhosts").await;
    assert_eq!(vhosts.as_array().expect("list").len(), 2);
    assert_eq!(get_json(&api, "/api/vhosts/apps").await["name"], "apps");
    let r = send(
        &api,
        "PUT",
        "/api/users/app",
        Some(&json!({"password": "s3cret", "tags": ""})),
    )
    .await;
    assert_eq!(r.status, 201);
    let r = send(
        &api,
        "PUT",
        "/api/users/nopass",
        Some(&json!({"tags": "management"})),
    )
    .await;
    assert_eq!(r.status, 400, "a new user needs a password");
    let users = get_json(&api, "/api/users").await;
    assert!(
        users
            .as_array()
            .expect("list")
            .iter()
            .any(|u| u["name"] == "app")
    );
    assert!(
        !users.to_string().contains("s3cret"),
        "passwords stay secret"
    );
    assert_eq!(get_json(&api, "/api/users/app").await["name"], "app");

    let amqp = server.amqp.expect("amqp");
    let refused = Connection::connect(
        &format!("amqp://app:s3cret@{amqp}/apps"),
        ConnectionProperties::default(),
    )
    .await;
    assert!(refused.is_err(), "no permission in the vhost yet");

    let perm = json!({"configure": "^app\\.", "write": "^app\\.", "read": ".*"});
    let r = send(&api, "PUT", "/api/permissions/apps/app", Some(&perm)).await;
    assert_eq!(r.status, 201);
    let bad = json!({"configure": "(", "write": "", "read": ""});
    assert_eq!(
        send(&api, "PUT", "/api/permissions/apps/app", Some(&bad))
            .await
            .status,
        400
    );
    assert_eq!(
        send(&api, "PUT", "/api/permissions/apps/ghost", Some(&perm))
            .await
            .status,
        400
    );
    assert_eq!(
        send(&api, "PUT", "/api/permissions/nowhere/app", Some(&perm))
            .await
            .status,
        404
    );
    let p = get_json(&api, "/api/permissions/apps/app").await;
    assert_eq!(p["configure"], "^app\\.");
    let mine = get_json(&api, "/api/users/app/permissions").await;
    assert_eq!(mine.as_array().expect("list").len(), 1);
    let in_apps = get_json(&api, "/api/vhosts/apps/permissions").await;
    assert_eq!(in_apps, mine);
    let all = get_json(&api, "/api/permissions").await;
    assert!(
        all.as_array()
            .expect("list")
            .iter()
            .any(|p| p["user"] == "guest" && p["vhost"] == "/")
    );

    let conn = within(
        "app's connection",
        Connection::connect(
            &format!("amqp://app:s3cret@{amqp}/apps"),
            ConnectionProperties::default(),
        ),
    )
    .await
    .expect("app may open its vhost now");
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "app.inbox", FieldTable::default()).await;
    let err = ch
        .queue_declare(
            "other".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("configure refused outside ^app\\.");
    assert!(err.to_string().contains("ACCESS_REFUSED"), "{err}");
    let ch = conn.create_channel().await.expect("a fresh channel");
    // The default exchange is `amq.default` to permissions, outside ^app\.
    let sent = ch
        .basic_publish(
            "".into(),
            "app.inbox".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish is sent");
    drop(sent);
    ch.queue_declare(
        "app.inbox".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect_err("the refused publish closed the channel");
    let inbox = get_json(&api, "/api/queues/apps/app.inbox").await;
    assert_eq!(
        inbox["messages_ready"], 0,
        "the refused message was not routed"
    );

    assert_eq!(
        send(&api, "DELETE", "/api/permissions/apps/app", None)
            .await
            .status,
        204
    );
    assert_eq!(
        send(&api, "DELETE", "/api/permissions/apps/app", None)
            .await
            .status,
        404
    );
    assert_eq!(
        send(&api, "DELETE", "/api/users/app", None).await.status,
        204
    );
    assert_eq!(
        send(&api, "DELETE", "/api/users/app", None).await.status,
        404
    );
    assert_eq!(
        send(&api, "DELETE", "/api/vhosts/apps", None).await.status,
        204
    );
    assert_eq!(
        send(&api, "GET", "/api/vhosts/apps", None).await.status,
        404
    );
}

#[tokio::test]
async fn definitions_exported_from_one_broker_import_into_another() {
    let a = start().await;
    let api = admin(&a);
    send(&api, "PUT", "/api/vhosts/shop", None).await;
    send(
        &api,
        "PUT",
        "/api/exchanges/shop/orders",
        Some(&json!({"type": "direct"})),
    )
    .await;
    send(
        &api,
        "PUT",
        "/api/queues/shop/billing",
        Some(&json!({"arguments": {"x-message-ttl": 60000}})),
    )
    .await;
    send(
        &api,
        "POST",
        "/api/bindings/shop/e/orders/q/billing",
        Some(&json!({"routing_key": "paid"})),
    )
    .await;
    send(
        &api,
        "PUT",
        "/api/users/clerk",
        Some(&json!({"password": "pw", "tags": ["management"]})),
    )
    .await;
    send(
        &api,
        "PUT",
        "/api/permissions/shop/clerk",
        Some(&json!({"configure": "", "write": "orders", "read": "billing"})),
    )
    .await;
    let defs = get_json(&api, "/api/definitions").await;
    assert!(
        defs["exchanges"]
            .as_array()
            .expect("list")
            .iter()
            .all(|e| e["name"] == "orders")
    );

    let b = start().await;
    let api_b = admin(&b);
    let r = send(&api_b, "POST", "/api/definitions", Some(&defs)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let q = get_json(&api_b, "/api/queues/shop/billing").await;
    assert_eq!(q["arguments"]["x-message-ttl"], 60000);
    let bound = get_json(&api_b, "/api/bindings/shop/e/orders/q/billing").await;
    assert_eq!(bound[0]["routing_key"], "paid");
    let p = get_json(&api_b, "/api/permissions/shop/clerk").await;
    assert_eq!(p["write"], "orders");
    let clerk = as_user(&b, "clerk", "pw");
    get_json(&clerk, "/api/overview").await;
    assert_eq!(get_json(&api_b, "/api/definitions").await, defs);
    let broken = json!({"queues": [{"name": "q", "vhost": "missing"}]});
    let r = send(&api_b, "POST", "/api/definitions", Some(&broken)).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("missing"));
}
