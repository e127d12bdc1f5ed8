//! STOMP and MQTT through one core: a raw STOMP client and rumqttc (MQTT
//! 5), topics meeting in amq.topic, headers and user properties both ways.

mod common;
mod mqtt_common;
mod stomp_common;

use bytes::Bytes;
use common::start;
use ferrymq::stomp::codec::Command;
use mqtt_common::{V5, v5};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use stomp_common::{Client, frame, header};

async fn subscribed(c: &mut V5, filter: &str) {
    c.client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    c.expect(&format!("SUBACK for {filter}"), |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_mqtt_publish_reaches_a_stomp_topic_subscriber_with_its_properties() {
    let server = start().await;
    let mut stomp = Client::connect(&server, "1.2").await;
    stomp.subscribe("/topic/plant.*.temp", "s", &[]).await;
    let sensor = v5(&server, "sensor").await;
    let props = PublishProperties {
        content_type: Some("text/plain".into()),
        correlation_data: Some(Bytes::from_static(b"req-7")),
        response_topic: Some("replies/sensor".into()),
        user_properties: vec![("unit".into(), "celsius".into())],
        ..Default::default()
    };
    sensor
        .client
        .publish_with_properties("plant/3/temp", QoS::AtLeastOnce, false, "21.5", props)
        .await
        .expect("publish queued");
    let m = stomp.message("the MQTT publish over STOMP").await;
    assert_eq!(&m.body[..], b"21.5");
    assert_eq!(header(&m, "destination"), "/topic/plant.3.temp");
    assert_eq!(header(&m, "content-type"), "text/plain");
    assert_eq!(header(&m, "correlation-id"), "req-7");
    assert_eq!(header(&m, "persistent"), "true", "QoS 1 is persistent");
    assert_eq!(header(&m, "unit"), "celsius");
    assert_eq!(header(&m, "x-reply-to-topic"), "replies.sensor");
}

#[tokio::test]
async fn a_stomp_send_to_a_topic_reaches_an_mqtt_subscriber_with_user_properties() {
    let server = start().await;
    let mut app = v5(&server, "app").await;
    subscribed(&mut app, "orders/+/created").await;
    let mut stomp = Client::connect(&server, "1.1").await;
    let send = frame(
        Command::Send,
        &[
            ("destination", "/topic/orders.eu.created"),
            ("content-type", "application/json"),
            ("correlation-id", "c-1"),
            ("x-tenant", "acme"),
        ],
    )
    .with_body("{}");
    stomp.send_receipted(send, "sent").await;
    let p = app
        .expect("the STOMP message over MQTT", |p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await;
    assert_eq!(&p.topic[..], b"orders/eu/created");
    assert_eq!(&p.payload[..], b"{}");
    let props = p.properties.expect("MQTT 5 properties");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"c-1"[..]));
    assert!(
        props
            .user_properties
            .contains(&("x-tenant".to_owned(), "acme".to_owned())),
        "{:?}",
        props.user_properties
    );
}

#[tokio::test]
async fn a_stomp_send_with_the_retain_header_is_retained_for_later_mqtt_subscribers() {
    let server = start().await;
    let mut stomp = Client::connect(&server, "1.2").await;
    let send = frame(
        Command::Send,
        &[
            ("destination", "/topic/status.door"),
            ("x-mqtt-retain", "true"),
        ],
    )
    .with_body("open");
    stomp.send_receipted(send, "retained").await;
    let mut late = v5(&server, "late").await;
    late.client
        .subscribe("status/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    let p = late
        .expect("the retained message", |p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        (&b"status/door"[..], &b"open"[..])
    );
    assert!(p.retain, "delivered as a retained message");
}
