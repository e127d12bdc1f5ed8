//! MQTT and AMQP clients meeting in one broker: rumqttc (5.0 and 3.1.1)
//! against lapin, with properties carried across both ways.

mod common;
mod mqtt_common;

use bytes::Bytes;
use common::{connect, start, within};
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use mqtt_common::{V5, v4, v5};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};

fn publish_of(p: Packet) -> Option<rumqttc::v5::mqttbytes::v5::Publish> {
    match p {
        Packet::Publish(p) => Some(p),
        _ => None,
    }
}

async fn subscribed(c: &mut V5, filter: &str, qos: QoS) {
    c.client
        .subscribe(filter, qos)
        .await
        .expect("subscribe queued");
    c.expect(&format!("SUBACK for {filter}"), |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;
}

async fn amqp_queue_bound_to(ch: &lapin::Channel, key: &str) -> ShortString {
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue declared");
    ch.queue_bind(
        q.name().clone(),
        "amq.topic".into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue bound to amq.topic");
    q.name().clone()
}

fn header<'a>(p: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    p.headers().as_ref()?.inner().get(name)
}

#[tokio::test]
async fn an_mqtt_publish_reaches_an_amqp_queue_bound_to_amq_topic_with_properties() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    let queue = amqp_queue_bound_to(&ch, "plant.3.temp").await;
    let mut consumer = ch
        .basic_consume(
            queue,
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut sensor = v5(&server, "sensor").await;
    let props = PublishProperties {
        content_type: Some("text/plain".into()),
        correlation_data: Some(Bytes::from_static(b"req-7")),
        response_topic: Some("replies/sensor".into()),
        message_expiry_interval: Some(60),
        user_properties: vec![("unit".into(), "celsius".into())],
        ..Default::default()
    };
    sensor
        .client
        .publish_with_properties("plant/3/temp", QoS::AtLeastOnce, false, "21.5", props)
        .await
        .expect("publish queued");
    sensor
        .expect("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(()))
        .await;
    let d = within("the AMQP delivery", consumer.next())
        .await
        .expect("stream open")
        .expect("delivery ok");
    assert_eq!(d.data, b"21.5", "body byte for byte");
    assert_eq!(d.routing_key.as_str(), "plant.3.temp");
    let p = &d.properties;
    assert_eq!(*p.delivery_mode(), Some(2), "QoS 1 is persistent");
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("text/plain")
    );
    assert_eq!(
        p.correlation_id().as_ref().map(|s| s.as_str()),
        Some("req-7")
    );
    assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), Some("60000"));
    assert_eq!(
        header(p, "unit"),
        Some(&AMQPValue::LongString("celsius".into()))
    );
    assert_eq!(
        header(p, "x-reply-to-topic"),
        Some(&AMQPValue::LongString("replies.sensor".into()))
    );
    assert_eq!(
        header(p, "x-mqtt-publish-qos"),
        Some(&AMQPValue::ShortShortUInt(1))
    );
    d.ack(BasicAckOptions::default()).await.expect("ack");
}

#[tokio::test]
async fn an_amqp_publish_to_amq_topic_reaches_mqtt_subscribers_with_properties() {
    let server = start().await;
    let mut sub5 = v5(&server, "dash5").await;
    subscribed(&mut sub5, "plant/+/temp", QoS::AtLeastOnce).await;
    let mut sub4 = v4(&server, "dash4").await;
    sub4.client
        .subscribe("plant/#", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    sub4.expect("SUBACK", |p| {
        matches!(p, rumqttc::Packet::SubAck(_)).then_some(())
    })
    .await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut headers = FieldTable::default();
    headers.insert("site".into(), AMQPValue::LongString("north".into()));
    headers.insert(
        "x-reply-to-topic".into(),
        AMQPValue::LongString("replies.plant".into()),
    );
    ch.basic_publish(
        "amq.topic".into(),
        "plant.3.temp".into(),
        BasicPublishOptions::default(),
        b"22.0",
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("text/plain".into())
            .with_correlation_id("corr-1".into())
            .with_message_id("m-1".into())
            .with_headers(headers),
    )
    .await
    .expect("publish");
    let p = sub5.expect("the delivery on MQTT 5", publish_of).await;
    assert_eq!(&p.topic[..], b"plant/3/temp");
    assert_eq!(&p.payload[..], b"22.0");
    assert_eq!(
        p.qos,
        QoS::AtLeastOnce,
        "persistent AMQP messages are QoS 1"
    );
    let props = p.properties.expect("MQTT 5 properties");
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(props.response_topic.as_deref(), Some("replies/plant"));
    assert!(
        props
            .user_properties
            .contains(&("site".into(), "north".into()))
    );
    assert!(
        props
            .user_properties
            .contains(&("message-id".into(), "m-1".into()))
    );
    let p = sub4
        .expect("the delivery on MQTT 3.1.1", |p| match p {
            rumqttc::Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await;
    assert_eq!(p.topic, "plant/3/temp");
    assert_eq!(&p.payload[..], b"22.0");
}

#[tokio::test]
async fn an_amqp_publish_with_the_retain_header_is_retained_for_mqtt() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut headers = FieldTable::default();
    headers.insert("x-mqtt-retain".into(), AMQPValue::Boolean(true));
    ch.basic_publish(
        "amq.topic".into(),
        "config.site".into(),
        BasicPublishOptions::default(),
        b"v2",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let mut late = v5(&server, "late-reader").await;
    subscribed(&mut late, "config/+", QoS::AtMostOnce).await;
    let p = late.expect("the retained AMQP message", publish_of).await;
    assert!(p.retain);
    assert_eq!(&p.topic[..], b"config/site");
    assert_eq!(&p.payload[..], b"v2");
}

#[tokio::test]
async fn request_and_response_between_mqtt_and_an_amqp_responder() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    let queue = amqp_queue_bound_to(&ch, "rpc.time").await;
    let mut requests = ch
        .basic_consume(
            queue,
            "responder".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut client = v5(&server, "requester").await;
    subscribed(&mut client, "replies/requester", QoS::AtLeastOnce).await;
    let props = PublishProperties {
        response_topic: Some("replies/requester".into()),
        correlation_data: Some(Bytes::from_static(&[0xff, 0x00])),
        ..Default::default()
    };
    client
        .client
        .publish_with_properties("rpc/time", QoS::AtLeastOnce, false, "now?", props)
        .await
        .expect("publish queued");
    let req = within("the request over AMQP", requests.next())
        .await
        .expect("stream open")
        .expect("delivery ok");
    let reply_key = match header(&req.properties, "x-reply-to-topic") {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("x-reply-to-topic missing: {other:?}"),
    };
    let corr = header(&req.properties, "x-correlation-id")
        .cloned()
        .expect("binary correlation data travels as a header");
    let mut headers = FieldTable::default();
    headers.insert("x-correlation-id".into(), corr);
    ch.basic_publish(
        "amq.topic".into(),
        reply_key.as_str().into(),
        BasicPublishOptions::default(),
        b"noon",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .expect("reply published");
    let p = client.expect("the reply", publish_of).await;
    assert_eq!(&p.payload[..], b"noon");
    let props = p.properties.expect("properties");
    assert_eq!(props.correlation_data.as_deref(), Some(&[0xff, 0x00][..]));
}
