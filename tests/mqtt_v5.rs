//! rumqttc speaking MQTT 5 to an in-process ferrymq: properties, reason
//! codes, subscription options, flow control, aliases and session expiry.

mod common;
mod mqtt_common;

use std::time::Duration;

use bytes::Bytes;
use common::start;
use mqtt_common::{V5, v5, v5_options};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, LastWillProperties, Packet, PubAckReason, Publish, PublishProperties,
    SubscribeProperties, SubscribeReasonCode,
};

fn publish_of(p: Packet) -> Option<Publish> {
    match p {
        Packet::Publish(p) => Some(p),
        _ => None,
    }
}

async fn subscribed(
    c: &mut V5,
    filters: Vec<Filter>,
    id: Option<usize>,
) -> Vec<SubscribeReasonCode> {
    let props = SubscribeProperties {
        id,
        user_properties: vec![],
    };
    c.client
        .subscribe_many_with_properties(filters, props)
        .await
        .expect("subscribe queued");
    c.expect("SUBACK", |p| match p {
        Packet::SubAck(a) => Some(a.return_codes),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn mqtt5_properties_travel_between_clients() {
    let server = start().await;
    let mut sub = v5(&server, "p-sub").await;
    subscribed(&mut sub, vec![Filter::new("p/#", QoS::AtLeastOnce)], None).await;
    let publisher = v5(&server, "p-pub").await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(120),
        content_type: Some("application/json".into()),
        response_topic: Some("p/replies".into()),
        correlation_data: Some(Bytes::from_static(&[0xff, 1, 2])),
        user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("p/x", QoS::AtLeastOnce, false, "{}", props)
        .await
        .expect("publish queued");
    let p = sub.expect("the publish with properties", publish_of).await;
    let props = p.properties.expect("properties");
    assert_eq!(props.payload_format_indicator, Some(1));
    assert!(matches!(props.message_expiry_interval, Some(119..=120)));
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.response_topic.as_deref(), Some("p/replies"));
    assert_eq!(props.correlation_data.as_deref(), Some(&[0xff, 1, 2][..]));
    assert_eq!(
        props.user_properties,
        vec![
            ("a".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string())
        ]
    );
}

#[tokio::test]
async fn subscription_identifiers_are_reported_and_no_local_skips_own_messages() {
    let server = start().await;
    let mut c = v5(&server, "ids").await;
    subscribed(&mut c, vec![Filter::new("s/#", QoS::AtLeastOnce)], Some(11)).await;
    subscribed(&mut c, vec![Filter::new("s/+", QoS::AtMostOnce)], Some(12)).await;
    let other = v5(&server, "ids-pub").await;
    other
        .client
        .publish("s/a", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish queued");
    let p = c
        .expect("one copy for two matching subscriptions", publish_of)
        .await;
    assert_eq!(p.qos, QoS::AtLeastOnce, "the highest granted QoS");
    let mut ids = p.properties.expect("properties").subscription_identifiers;
    ids.sort();
    assert_eq!(ids, [11, 12]);
    let mut nl = Filter::new("loop/#", QoS::AtLeastOnce);
    nl.nolocal = true;
    subscribed(
        &mut c,
        vec![nl, Filter::new("mark", QoS::AtLeastOnce)],
        None,
    )
    .await;
    c.client
        .publish("loop/me", QoS::AtLeastOnce, false, "own")
        .await
        .expect("publish queued");
    c.client
        .publish("mark", QoS::AtLeastOnce, false, "m")
        .await
        .expect("publish queued");
    let p = c
        .expect("the marker after the own message", publish_of)
        .await;
    assert_eq!(&p.topic[..], b"mark", "no-local kept our own loop/me away");
}

#[tokio::test]
async fn a_publish_nobody_subscribed_to_is_acknowledged_as_such() {
    let server = start().await;
    let mut c = v5(&server, "codes").await;
    let codes = subscribed(&mut c, vec![Filter::new("ok/#", QoS::ExactlyOnce)], None).await;
    assert_eq!(codes, [SubscribeReasonCode::Success(QoS::ExactlyOnce)]);
    c.client
        .publish("nobody/listens", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish queued");
    let reason = c
        .expect("PUBACK", |p| match p {
            Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, PubAckReason::NoMatchingSubscribers);
}

#[tokio::test]
async fn topic_aliases_work_in_both_directions() {
    let server = start().await;
    let mut opts = v5_options(&server, "alias-sub");
    opts.set_topic_alias_max(Some(4));
    let (mut sub, ack) = V5::connect(opts).await;
    let broker_max = ack.properties.and_then(|p| p.topic_alias_max);
    assert!(broker_max.unwrap_or(0) > 0, "the broker accepts aliases");
    subscribed(&mut sub, vec![Filter::new("al/#", QoS::AtMostOnce)], None).await;
    let publisher = v5(&server, "alias-pub").await;
    let with_alias = |alias| PublishProperties {
        topic_alias: Some(alias),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties(
            "al/long/topic/name",
            QoS::AtMostOnce,
            false,
            "1",
            with_alias(1),
        )
        .await
        .expect("publish queued");
    publisher
        .client
        .publish_with_properties("", QoS::AtMostOnce, false, "2", with_alias(1))
        .await
        .expect("publish queued");
    // The broker resolved the publisher's alias and sets up its own toward
    // the subscriber: the topic once, then the alias alone.
    let p = sub.expect("the first publish", publish_of).await;
    assert_eq!(&p.topic[..], b"al/long/topic/name");
    assert_eq!(&p.payload[..], b"1");
    assert_eq!(p.properties.and_then(|p| p.topic_alias), Some(1));
    let p = sub.expect("the second publish", publish_of).await;
    assert_eq!(&p.topic[..], b"", "sent by alias only");
    assert_eq!(&p.payload[..], b"2");
    assert_eq!(p.properties.and_then(|p| p.topic_alias), Some(1));
}

#[tokio::test]
async fn receive_maximum_limits_unacknowledged_deliveries() {
    let server = start().await;
    let mut opts = v5_options(&server, "slow");
    opts.set_receive_maximum(Some(2));
    opts.set_manual_acks(true);
    let (mut slow, _) = V5::connect(opts).await;
    subscribed(
        &mut slow,
        vec![Filter::new("work/#", QoS::AtLeastOnce)],
        None,
    )
    .await;
    let mut publisher = v5(&server, "fast").await;
    for i in 0..5u8 {
        publisher
            .client
            .publish(format!("work/{i}"), QoS::AtLeastOnce, false, vec![i])
            .await
            .expect("publish queued");
    }
    for _ in 0..5 {
        publisher
            .expect("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(()))
            .await;
    }
    let first = slow.expect("delivery 1", publish_of).await;
    let _second = slow.expect("delivery 2", publish_of).await;
    let q = server
        .broker
        .vhost("/")
        .expect("vhost")
        .queue("mqtt-subscription-slowqos1")
        .expect("session queue");
    assert_eq!(
        q.unacked_count(),
        2,
        "two in flight, as Receive Maximum says"
    );
    assert_eq!(q.message_count(), 3, "the rest wait in the queue");
    slow.client.ack(&first).await.expect("ack queued");
    let third = slow.expect("delivery 3 after one PUBACK", publish_of).await;
    assert_eq!(&third.payload[..], [2]);
}

#[tokio::test]
async fn maximum_packet_size_drops_deliveries_the_client_cannot_take() {
    let server = start().await;
    let mut opts = v5_options(&server, "small");
    opts.set_max_packet_size(Some(512));
    let (mut small, _) = V5::connect(opts).await;
    subscribed(
        &mut small,
        vec![Filter::new("big/#", QoS::AtLeastOnce)],
        None,
    )
    .await;
    let publisher = v5(&server, "big-pub").await;
    publisher
        .client
        .publish("big/one", QoS::AtLeastOnce, false, vec![0u8; 4096])
        .await
        .expect("publish queued");
    publisher
        .client
        .publish("big/two", QoS::AtLeastOnce, false, "small")
        .await
        .expect("publish queued");
    let p = small.expect("the small message", publish_of).await;
    assert_eq!(&p.topic[..], b"big/two", "the oversized one was dropped");
}

#[tokio::test]
async fn session_takeover_tells_the_first_client_why() {
    let server = start().await;
    let mut first = v5(&server, "dup").await;
    let _second = v5(&server, "dup").await;
    let why = first.closed("the first connection to be closed").await;
    assert!(why.contains("SessionTakenOver"), "{why}");
}

#[tokio::test]
async fn an_expired_session_is_gone_when_the_client_returns() {
    let server = start().await;
    let mut opts = v5_options(&server, "brief");
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(1));
    let (mut c, ack) = V5::connect(opts.clone()).await;
    assert!(!ack.session_present);
    subscribed(&mut c, vec![Filter::new("e/#", QoS::AtLeastOnce)], None).await;
    c.client.disconnect().await.expect("disconnect queued");
    c.closed("the broker to close after DISCONNECT").await;
    let vhost = server.broker.vhost("/").expect("vhost");
    mqtt_common::wait_until("the session queue to expire", || {
        vhost.queue("mqtt-subscription-briefqos1").is_none()
    })
    .await;
    let (_c, ack) = V5::connect(opts).await;
    assert!(!ack.session_present, "the session expired");
}

#[tokio::test]
async fn a_delayed_will_is_published_after_its_delay() {
    let server = start().await;
    let mut watcher = v5(&server, "will-watch").await;
    subscribed(
        &mut watcher,
        vec![Filter::new("wills/#", QoS::AtLeastOnce)],
        None,
    )
    .await;
    let mut opts = v5_options(&server, "delayed");
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(60));
    let props = LastWillProperties {
        delay_interval: Some(1),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: Some("text/plain".into()),
        response_topic: None,
        correlation_data: None,
        user_properties: vec![("why".into(), "crash".into())],
    };
    opts.set_last_will(LastWill::new(
        "wills/delayed",
        "bye",
        QoS::AtLeastOnce,
        true,
        Some(props),
    ));
    let (c, _) = V5::connect(opts).await;
    let vanished = tokio::time::Instant::now();
    c.vanish();
    let p = watcher.expect("the delayed will", publish_of).await;
    assert!(
        vanished.elapsed() >= Duration::from_millis(900),
        "published after the will delay, not before"
    );
    assert_eq!(&p.payload[..], b"bye");
    let props = p.properties.expect("will properties");
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        props.user_properties,
        vec![("why".to_string(), "crash".to_string())]
    );
    let vhost = server.broker.vhost("/").expect("vhost");
    assert!(
        vhost.retained().get("wills.delayed").is_some(),
        "a retained will is retained"
    );
}

#[tokio::test]
async fn retain_handling_and_retain_as_published() {
    let server = start().await;
    let mut publisher = v5(&server, "rh-pub").await;
    publisher
        .client
        .publish("rh/t", QoS::AtLeastOnce, true, "kept")
        .await
        .expect("publish queued");
    publisher
        .expect("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(()))
        .await;
    let mut c = v5(&server, "rh-sub").await;
    let mut never = Filter::new("rh/#", QoS::AtLeastOnce);
    never.retain_forward_rule = rumqttc::v5::mqttbytes::v5::RetainForwardRule::Never;
    subscribed(&mut c, vec![never], None).await;
    let mut new_only = Filter::new("rh/+", QoS::AtLeastOnce);
    new_only.retain_forward_rule = rumqttc::v5::mqttbytes::v5::RetainForwardRule::OnNewSubscribe;
    new_only.preserve_retain = true;
    subscribed(&mut c, vec![new_only.clone()], None).await;
    let p = c
        .expect("the retained message for the new subscription", publish_of)
        .await;
    assert!(p.retain);
    // The same subscription again is not new: nothing retained is sent.
    subscribed(&mut c, vec![new_only], None).await;
    publisher
        .client
        .publish("rh/t", QoS::AtLeastOnce, true, "live")
        .await
        .expect("publish queued");
    let p = c.expect("the live publish", publish_of).await;
    assert_eq!(&p.payload[..], b"live");
    assert!(
        p.retain,
        "retain as published keeps the flag on live deliveries"
    );
}
