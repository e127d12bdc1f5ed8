//! The operators' view of MQTT clients: listed connections, metrics by
//! protocol, closing from the API, and vhost permissions at CONNECT.

mod admin_common;
mod common;
mod mqtt_common;

use admin_common::{admin, anonymous, get_json, send};
use common::start;
use mqtt_common::{V4, v4, v4_options};
use rumqttc::{Packet, QoS};
use serde_json::json;

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn mqtt_clients_are_listed_counted_and_closable() {
    let server = start().await;
    let mut sub = v4(&server, "sensor-sub").await;
    sub.client
        .subscribe("plant/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    sub.expect("SUBACK", |p| matches!(p, Packet::SubAck(_)).then_some(()))
        .await;
    let mut publisher = v4(&server, "sensor-pub").await;
    publisher
        .client
        .publish("plant/1/temp", QoS::AtLeastOnce, false, "20")
        .await
        .expect("publish queued");
    publisher
        .expect("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(()))
        .await;
    sub.expect("the publish", |p| {
        matches!(p, Packet::Publish(_)).then_some(())
    })
    .await;

    let api = admin(&server);
    let conns = get_json(&api, "/api/connections").await;
    let conns = conns.as_array().expect("list");
    assert_eq!(conns.len(), 2);
    let s = conns
        .iter()
        .find(|c| c["client_properties"]["connection_name"] == "sensor-sub")
        .expect("the subscriber is listed by client id");
    assert_eq!(s["protocol"], "MQTT");
    assert_eq!(s["user"], "guest");
    assert_eq!(s["channels"], 1);
    let r = send(&anonymous(&server), "GET", "/metrics", None).await;
    let text = r.text();
    let mqtt = |name: &str| sample(&text, &format!("{name}{{protocol=\"mqtt\"}}"));
    assert_eq!(mqtt("ferrymq_connections"), Some(2.0));
    assert_eq!(mqtt("ferrymq_consumers"), Some(1.0));
    assert_eq!(mqtt("ferrymq_messages_published_total"), Some(1.0));
    assert_eq!(mqtt("ferrymq_messages_confirmed_total"), Some(1.0));
    assert_eq!(mqtt("ferrymq_messages_delivered_total"), Some(1.0));
    let o = get_json(&api, "/api/overview").await;
    assert_eq!(o["protocols"]["mqtt"]["connections"], 2);

    let name = s["name"].as_str().expect("name");
    let r = send(&api, "DELETE", &format!("/api/connections/{name}"), None).await;
    assert_eq!(r.status, 204);
    sub.closed("the broker to close the subscriber").await;
    let left = get_json(&api, "/api/connections").await;
    assert_eq!(left.as_array().expect("list").len(), 1, "{left}");
}

#[tokio::test]
async fn mqtt_login_needs_a_permission_in_the_vhost() {
    let server = start().await;
    let api = admin(&server);
    send(
        &api,
        "PUT",
        "/api/users/device",
        Some(&json!({"password": "pw"})),
    )
    .await;
    let mut opts = v4_options(&server, "device-1");
    opts.set_credentials("device", "pw");
    let refused = V4::try_connect(opts)
        .await
        .err()
        .expect("no permission in / yet");
    assert!(refused.contains("NotAuthorized"), "{refused}");
    let perm = json!({"configure": ".*", "write": ".*", "read": ".*"});
    send(&api, "PUT", "/api/permissions/%2F/device", Some(&perm)).await;
    let mut opts = v4_options(&server, "device-2");
    opts.set_credentials("device", "pw");
    let (_client, ack) = V4::connect(opts).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
}
