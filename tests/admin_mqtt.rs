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

/// Connects as user `reader` over MQTT 5, subscribes to `news/#` and
/// returns the client with the SUBACK's reason codes.
async fn subscribe_as_reader(
    server: &ferrymq::server::Server,
    id: &str,
) -> (
    mqtt_common::V5,
    Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode>,
) {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
    let mut opts = mqtt_common::v5_options(server, id);
    opts.set_credentials("reader", "pw");
    let (mut c, _) = mqtt_common::V5::connect(opts).await;
    c.client
        .subscribe("news/#", QoS5::AtLeastOnce)
        .await
        .expect("subscribe queued");
    let granted = c
        .expect("SUBACK", |p| match p {
            Packet5::SubAck(a) => Some(a.return_codes),
            _ => None,
        })
        .await;
    (c, granted)
}

#[tokio::test]
async fn mqtt_publish_and_subscribe_follow_the_permission_table() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason, SubscribeReasonCode};

    let server = start().await;
    let api = admin(&server);
    send(
        &api,
        "PUT",
        "/api/users/reader",
        Some(&json!({"password": "pw"})),
    )
    .await;
    // May subscribe (read amq.topic) but not publish (write).
    let perm = json!({"configure": ".*", "write": "^$", "read": ".*"});
    send(&api, "PUT", "/api/permissions/%2F/reader", Some(&perm)).await;

    let (mut c, granted) = subscribe_as_reader(&server, "reader-5").await;
    assert_eq!(
        granted,
        vec![SubscribeReasonCode::Success(QoS5::AtLeastOnce)]
    );
    c.client
        .publish("news/1", QoS5::AtLeastOnce, false, "x")
        .await
        .expect("publish queued");
    let reason = c
        .expect("PUBACK", |p| match p {
            Packet5::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, PubAckReason::NotAuthorized);

    // MQTT 3.1.1 cannot refuse in a PUBACK: the connection closes.
    let mut opts = v4_options(&server, "reader-4");
    opts.set_credentials("reader", "pw");
    let (mut c4, _) = V4::connect(opts).await;
    c4.client
        .publish("news/2", QoS::AtLeastOnce, false, "y")
        .await
        .expect("publish queued");
    c4.closed("the broker to close the refused publisher").await;

    // Without read access, the SUBACK refuses the filter.
    let perm = json!({"configure": ".*", "write": ".*", "read": "^$"});
    send(&api, "PUT", "/api/permissions/%2F/reader", Some(&perm)).await;
    let (_c, granted) = subscribe_as_reader(&server, "reader-5b").await;
    assert_eq!(granted, vec![SubscribeReasonCode::NotAuthorized]);
}
