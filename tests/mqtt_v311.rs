//! rumqttc speaking MQTT 3.1.1 to an in-process ferrymq.

mod common;
mod mqtt_common;

use common::start;
use mqtt_common::{V4, v4, v4_options};
use rumqttc::{ConnectReturnCode, LastWill, Packet, QoS};

fn publish_of(p: Packet) -> Option<rumqttc::Publish> {
    match p {
        Packet::Publish(p) => Some(p),
        _ => None,
    }
}

async fn subscribed(c: &mut V4, filter: &str, qos: QoS) -> Vec<rumqttc::SubscribeReasonCode> {
    c.client
        .subscribe(filter, qos)
        .await
        .expect("subscribe queued");
    c.expect(&format!("SUBACK for {filter}"), |p| match p {
        Packet::SubAck(a) => Some(a.return_codes),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn qos0_and_qos1_publishes_reach_wildcard_subscribers() {
    let server = start().await;
    let mut sub = v4(&server, "sub").await;
    let codes = subscribed(&mut sub, "plant/+/temp", QoS::AtLeastOnce).await;
    assert_eq!(
        codes,
        [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    subscribed(&mut sub, "office/#", QoS::AtMostOnce).await;
    let publisher = v4(&server, "pub").await;
    publisher
        .client
        .publish("plant/3/temp", QoS::AtLeastOnce, false, "21.5")
        .await
        .expect("publish queued");
    let p = sub.expect("plant/3/temp", publish_of).await;
    assert_eq!(p.topic, "plant/3/temp");
    assert_eq!(&p.payload[..], b"21.5");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(!p.retain);
    publisher
        .client
        .publish("office/2/light", QoS::AtLeastOnce, false, "on")
        .await
        .expect("publish queued");
    let p = sub.expect("office/2/light", publish_of).await;
    assert_eq!(p.topic, "office/2/light");
    assert_eq!(p.qos, QoS::AtMostOnce, "granted QoS 0 caps the delivery");
}

#[tokio::test]
async fn retained_message_is_sent_on_subscribe_and_cleared_by_an_empty_one() {
    let server = start().await;
    let mut publisher = v4(&server, "retainer").await;
    publisher
        .client
        .publish("status/door", QoS::AtLeastOnce, true, "open")
        .await
        .expect("publish queued");
    publisher
        .expect("PUBACK of the retained publish", |p| {
            matches!(p, Packet::PubAck(_)).then_some(())
        })
        .await;
    let mut late = v4(&server, "late").await;
    subscribed(&mut late, "status/#", QoS::AtLeastOnce).await;
    let p = late.expect("the retained message", publish_of).await;
    assert!(p.retain, "sent on subscribe with the retain flag");
    assert_eq!(&p.payload[..], b"open");
    // A live publish with retain reaches current subscribers without the flag.
    publisher
        .client
        .publish("status/door", QoS::AtLeastOnce, true, "closed")
        .await
        .expect("publish queued");
    let p = late.expect("the live retained publish", publish_of).await;
    assert!(!p.retain);
    publisher
        .client
        .publish("status/door", QoS::AtLeastOnce, true, "")
        .await
        .expect("publish queued");
    late.expect("the clearing publish", publish_of).await;
    let vhost = server.broker.vhost("/").expect("default vhost");
    assert!(
        vhost.retained().is_empty(),
        "an empty retained publish clears the topic"
    );
}

#[tokio::test]
async fn persistent_session_keeps_subscriptions_and_queued_messages() {
    let server = start().await;
    let mut opts = v4_options(&server, "keeper");
    opts.set_clean_session(false);
    let (mut c, ack) = V4::connect(opts.clone()).await;
    assert!(!ack.session_present);
    subscribed(&mut c, "jobs/#", QoS::AtLeastOnce).await;
    c.client.disconnect().await.expect("disconnect queued");
    c.closed("the broker to close after DISCONNECT").await;
    let publisher = v4(&server, "producer").await;
    for i in 0..3u8 {
        publisher
            .client
            .publish(format!("jobs/{i}"), QoS::AtLeastOnce, false, vec![i])
            .await
            .expect("publish queued");
    }
    let vhost = server.broker.vhost("/").expect("default vhost");
    mqtt_common::wait_until("three messages queued for the parked session", || {
        vhost
            .queue("mqtt-subscription-keeperqos1")
            .is_some_and(|q| q.message_count() == 3)
    })
    .await;
    let (mut c, ack) = V4::connect(opts).await;
    assert!(ack.session_present, "the session was resumed");
    for i in 0..3u8 {
        let p = c.expect("a queued message", publish_of).await;
        assert_eq!(p.topic, format!("jobs/{i}"));
        assert_eq!(&p.payload[..], [i]);
    }
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_the_session_over() {
    let server = start().await;
    let mut first = v4(&server, "twin").await;
    let mut second = v4(&server, "twin").await;
    let why = first.closed("the first connection to be closed").await;
    assert!(!why.is_empty());
    subscribed(&mut second, "still/here", QoS::AtMostOnce).await;
}

#[tokio::test]
async fn will_is_published_when_a_client_vanishes() {
    let server = start().await;
    let mut watcher = v4(&server, "watcher").await;
    subscribed(&mut watcher, "clients/+/status", QoS::AtLeastOnce).await;
    let mut opts = v4_options(&server, "fragile");
    opts.set_last_will(LastWill::new(
        "clients/fragile/status",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (fragile, _) = V4::connect(opts).await;
    fragile.vanish();
    let p = watcher.expect("the will message", publish_of).await;
    assert_eq!(p.topic, "clients/fragile/status");
    assert_eq!(&p.payload[..], b"gone");
}

#[tokio::test]
async fn will_is_not_published_after_a_clean_disconnect() {
    let server = start().await;
    let mut watcher = v4(&server, "watcher2").await;
    subscribed(&mut watcher, "w/#", QoS::AtLeastOnce).await;
    let mut opts = v4_options(&server, "polite");
    opts.set_last_will(LastWill::new("w/will", "gone", QoS::AtLeastOnce, false));
    let (mut polite, _) = V4::connect(opts).await;
    polite.client.disconnect().await.expect("disconnect queued");
    polite.closed("the broker to close after DISCONNECT").await;
    // A marker published after the disconnect arrives first: no will came.
    let marker = v4(&server, "marker").await;
    marker
        .client
        .publish("w/marker", QoS::AtLeastOnce, false, "m")
        .await
        .expect("publish queued");
    let p = watcher.expect("the marker", publish_of).await;
    assert_eq!(p.topic, "w/marker");
}

#[tokio::test]
async fn qos2_flows_exactly_once_both_ways() {
    let server = start().await;
    let mut sub = v4(&server, "q2sub").await;
    subscribed(&mut sub, "exact/#", QoS::ExactlyOnce).await;
    let mut publisher = v4(&server, "q2pub").await;
    for i in 0..5u8 {
        publisher
            .client
            .publish(format!("exact/{i}"), QoS::ExactlyOnce, false, vec![i])
            .await
            .expect("publish queued");
    }
    for i in 0..5u8 {
        let p = sub.expect("a QoS 2 delivery", publish_of).await;
        assert_eq!(p.qos, QoS::ExactlyOnce);
        assert_eq!(&p.payload[..], [i]);
    }
    for _ in 0..5 {
        publisher
            .expect("PUBCOMP", |p| matches!(p, Packet::PubComp(_)).then_some(()))
            .await;
    }
    let vhost = server.broker.vhost("/").expect("default vhost");
    let q = vhost
        .queue("mqtt-subscription-q2subqos1")
        .expect("session queue");
    mqtt_common::wait_until("the subscriber's PUBRECs to settle the queue", || {
        q.unacked_count() == 0 && q.message_count() == 0
    })
    .await;
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let server = start().await;
    let mut all = v4(&server, "all").await;
    subscribed(&mut all, "#", QoS::AtLeastOnce).await;
    subscribed(&mut all, "$SYS/#", QoS::AtLeastOnce).await;
    let mut plain = v4(&server, "plain").await;
    subscribed(&mut plain, "#", QoS::AtLeastOnce).await;
    let publisher = v4(&server, "sys").await;
    publisher
        .client
        .publish("$SYS/uptime", QoS::AtLeastOnce, false, "1")
        .await
        .expect("publish queued");
    publisher
        .client
        .publish("normal", QoS::AtLeastOnce, false, "2")
        .await
        .expect("publish queued");
    let p = all.expect("$SYS/uptime via $SYS/#", publish_of).await;
    assert_eq!(p.topic, "$SYS/uptime");
    let p = plain
        .expect("the next message after $SYS/uptime", publish_of)
        .await;
    assert_eq!(p.topic, "normal", "# must not match $SYS/uptime");
}

#[tokio::test]
async fn anonymous_logs_in_as_guest_and_a_bad_password_is_refused() {
    let server = start().await;
    let mut opts = v4_options(&server, "named");
    opts.set_credentials("guest", "guest");
    let (_ok, ack) = V4::connect(opts).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let mut opts = v4_options(&server, "vhosted");
    opts.set_credentials("/:guest", "guest");
    let (_ok, ack) = V4::connect(opts).await;
    assert_eq!(
        ack.code,
        ConnectReturnCode::Success,
        "vhost:user names the vhost"
    );
    let mut opts = v4_options(&server, "wrong");
    opts.set_credentials("guest", "nope");
    let refused = V4::try_connect(opts)
        .await
        .err()
        .expect("a wrong password is refused");
    assert!(refused.contains("BadUserNamePassword"), "{refused}");
    let mut opts = v4_options(&server, "nohost");
    opts.set_credentials("nohost:guest", "guest");
    let refused = V4::try_connect(opts)
        .await
        .err()
        .expect("an unknown vhost is refused");
    assert!(refused.contains("NotAuthorized"), "{refused}");
}

#[tokio::test]
async fn shared_subscription_balances_across_the_group() {
    let server = start().await;
    let mut a = v4(&server, "member-a").await;
    let mut b = v4(&server, "member-b").await;
    subscribed(&mut a, "$share/workers/tasks/#", QoS::AtLeastOnce).await;
    subscribed(&mut b, "$share/workers/tasks/#", QoS::AtLeastOnce).await;
    let publisher = v4(&server, "boss").await;
    for i in 0..10u8 {
        publisher
            .client
            .publish(format!("tasks/{i}"), QoS::AtLeastOnce, false, vec![i])
            .await
            .expect("publish queued");
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(a.expect("a's share", publish_of).await.payload[0]);
        seen.push(b.expect("b's share", publish_of).await.payload[0]);
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..10).collect::<Vec<u8>>(),
        "each task once, split between members"
    );
}

#[tokio::test]
async fn unsubscribe_stops_deliveries() {
    let server = start().await;
    let mut c = v4(&server, "quitter").await;
    subscribed(&mut c, "news/#", QoS::AtLeastOnce).await;
    subscribed(&mut c, "other", QoS::AtLeastOnce).await;
    c.client
        .unsubscribe("news/#")
        .await
        .expect("unsubscribe queued");
    c.expect("UNSUBACK", |p| {
        matches!(p, Packet::UnsubAck(_)).then_some(())
    })
    .await;
    let publisher = v4(&server, "newsroom").await;
    publisher
        .client
        .publish("news/today", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish queued");
    publisher
        .client
        .publish("other", QoS::AtLeastOnce, false, "y")
        .await
        .expect("publish queued");
    let p = c.expect("the next delivery", publish_of).await;
    assert_eq!(p.topic, "other", "news/today is no longer subscribed");
}

#[tokio::test]
async fn persistent_session_and_its_queued_messages_survive_a_broker_restart() {
    let dir = common::fresh_dir();
    {
        let server = common::start_in(&dir).await;
        let mut opts = v4_options(&server, "survivor");
        opts.set_clean_session(false);
        let (mut c, _) = V4::connect(opts).await;
        subscribed(&mut c, "alerts/+", QoS::AtLeastOnce).await;
        c.client.disconnect().await.expect("disconnect queued");
        c.closed("the broker to close after DISCONNECT").await;
        let mut publisher = v4(&server, "alarm").await;
        for i in 0..2u8 {
            publisher
                .client
                .publish(format!("alerts/{i}"), QoS::AtLeastOnce, false, vec![i])
                .await
                .expect("publish queued");
        }
        for _ in 0..2 {
            publisher
                .expect("PUBACK (the journal holds the message)", |p| {
                    matches!(p, Packet::PubAck(_)).then_some(())
                })
                .await;
        }
        drop(publisher);
        server.shutdown(std::time::Duration::from_secs(5)).await;
    }
    let server = common::start_in(&dir).await;
    let mut opts = v4_options(&server, "survivor");
    opts.set_clean_session(false);
    let (mut c, ack) = V4::connect(opts).await;
    assert!(
        ack.session_present,
        "resumed from the durable queue and its bindings"
    );
    for i in 0..2u8 {
        let p = c
            .expect("a message kept across the restart", publish_of)
            .await;
        assert_eq!(p.topic, format!("alerts/{i}"));
    }
    let publisher = v4(&server, "alarm2").await;
    publisher
        .client
        .publish("alerts/new", QoS::AtLeastOnce, false, "n")
        .await
        .expect("publish queued");
    let p = c
        .expect("a message through the recovered subscription", publish_of)
        .await;
    assert_eq!(p.topic, "alerts/new");
}
