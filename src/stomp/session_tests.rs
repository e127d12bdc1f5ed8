//! The session frame by frame: frames and events in, frames out.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::codec::Decoder;

use super::*;
use crate::core::change::{Change, ChangeLog, Logged};
use crate::core::{Limits, NoLog, VHostName};
use crate::stomp::codec::Item;

/// Gives every record a position, as the journal does, and nothing else.
#[derive(Debug, Default)]
struct Positions {
    next: AtomicU64,
    kinds: Mutex<Vec<&'static str>>,
}

impl ChangeLog for Positions {
    fn record(&self, _vhost: &VHostName, change: Change) -> Option<Logged> {
        let kind = match change {
            Change::Enqueued { .. } => "enqueued",
            Change::Removed { .. } => "removed",
            _ => "other",
        };
        self.kinds.lock().unwrap().push(kind);
        let seq = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        Some(Logged {
            seq,
            segment: 0,
            offset: 0,
        })
    }
}

struct Harness {
    session: Session,
    events: crate::core::event_channel::EventStream,
    client: StompCodec,
}

fn users() -> crate::core::Users {
    crate::core::Users::new([User {
        name: "guest".into(),
        password: "guest".into(),
        tags: vec![],
        loopback_only: true,
        vhosts: vec![],
    }])
}

fn harness_with(log: Arc<dyn ChangeLog>, peer: &str) -> Harness {
    let broker = Broker::new(&["/", "other"], users(), Limits::default(), log);
    let settings = Arc::new(Settings::for_broker(&broker));
    let (tx, rx) = crate::core::event_channel::channel();
    Harness {
        session: Session::new(broker, settings, peer.parse().unwrap(), tx),
        events: rx,
        client: StompCodec::default(),
    }
}

fn harness() -> Harness {
    harness_with(Arc::new(NoLog), "127.0.0.1:5000")
}

fn frame(command: Command, headers: &[(&str, &str)]) -> Frame {
    headers
        .iter()
        .fold(Frame::new(command), |f, (k, v)| f.with_header(*k, *v))
}

impl Harness {
    /// Feeds one frame and decodes what the session wrote.
    fn send(&mut self, f: Frame) -> Vec<Frame> {
        let mut out = BytesMut::new();
        self.session.on_frame(f, &mut out);
        self.decode(out)
    }

    /// Hands queued core events to the session and decodes its output.
    fn pump(&mut self) -> Vec<Frame> {
        let mut out = BytesMut::new();
        while let Ok(e) = self.events.try_recv() {
            self.session.on_event(e, &mut out);
        }
        self.session.after_write();
        self.decode(out)
    }

    fn decode(&mut self, mut out: BytesMut) -> Vec<Frame> {
        self.client.set_version(self.session.version());
        let mut frames = Vec::new();
        while let Some(item) = self
            .client
            .decode(&mut out)
            .expect("the session writes valid frames")
        {
            if let Item::Frame(f) = item {
                frames.push(f);
            }
        }
        assert!(out.is_empty(), "whole frames only");
        frames
    }

    fn connect(&mut self, accept: &str) -> Frame {
        let mut got = self.send(frame(
            Command::Connect,
            &[
                ("accept-version", accept),
                ("login", "guest"),
                ("passcode", "guest"),
            ],
        ));
        assert_eq!(got.len(), 1, "{got:?}");
        got.remove(0)
    }

    fn one(&mut self, f: Frame) -> Frame {
        let mut got = self.send(f);
        assert_eq!(got.len(), 1, "{got:?}");
        got.remove(0)
    }
}

fn header<'a>(f: &'a Frame, name: &str) -> &'a str {
    f.header(name)
        .unwrap_or_else(|| panic!("{} has no {name}: {f:?}", f.command))
}

#[test]
fn connect_negotiates_the_highest_common_version() {
    for (accept, want) in [
        ("1.0,1.1,1.2", Some("1.2")),
        ("1.1,1.0", Some("1.1")),
        ("1.0", None),
        ("1.2, 2.0", Some("1.2")),
    ] {
        let mut h = harness();
        let f = h.connect(accept);
        assert_eq!(f.command, Command::Connected);
        assert_eq!(f.header("version"), want, "{accept}");
        assert!(f.header("session").is_some() && f.header("server").is_some());
    }
    let mut h = harness();
    let f = h.one(frame(
        Command::Connect,
        &[("login", "guest"), ("passcode", "guest")],
    ));
    assert_eq!(f.header("version"), None, "no accept-version is 1.0");
    assert_eq!(h.session.version(), Version::V1_0);

    let mut h = harness();
    let f = h.connect("2.0,3.1");
    assert_eq!(f.command, Command::Error);
    assert_eq!(header(&f, "message"), "Version mismatch");
    assert!(h.session.is_done());
}

#[test]
fn heart_beats_echo_the_client_within_bounds() {
    let mut h = harness();
    let f = h.one(frame(
        Command::Stomp,
        &[
            ("accept-version", "1.2"),
            ("heart-beat", "5,10000"),
            ("login", "guest"),
            ("passcode", "guest"),
        ],
    ));
    assert_eq!(header(&f, "heart-beat"), "10000,100");
    assert_eq!(
        h.session.heartbeat(),
        Heartbeat {
            send: Some(Duration::from_secs(10)),
            receive: Some(MIN_HEARTBEAT),
        }
    );
    let mut h = harness();
    let f = h.one(frame(
        Command::Connect,
        &[("heart-beat", "soon"), ("login", "guest")],
    ));
    assert_eq!(f.command, Command::Error);
}

#[test]
fn logins_are_checked_and_guest_stays_on_loopback() {
    let mut h = harness();
    let f = h.one(frame(
        Command::Connect,
        &[("login", "guest"), ("passcode", "nope")],
    ));
    assert_eq!(
        (f.command, header(&f, "message")),
        (Command::Error, "Bad CONNECT")
    );
    assert!(h.session.is_done());

    // No login: RabbitMQ's default user, who is loopback-only.
    let mut h = harness();
    assert_eq!(
        h.one(frame(Command::Connect, &[])).command,
        Command::Connected
    );
    let mut h = harness_with(Arc::new(NoLog), "10.1.2.3:5000");
    let f = h.one(frame(Command::Connect, &[]));
    assert_eq!(f.command, Command::Error);
    assert!(header(&f, "message").contains("Bad CONNECT"));
}

#[test]
fn host_picks_an_existing_vhost_and_falls_back_to_the_default() {
    let mut h = harness();
    h.send(frame(
        Command::Connect,
        &[("host", "other"), ("login", "guest"), ("passcode", "guest")],
    ));
    assert_eq!(h.session.vhost_name(), Some("other"));
    let mut h = harness();
    h.send(frame(
        Command::Connect,
        &[
            ("host", "broker.example.com"),
            ("login", "guest"),
            ("passcode", "guest"),
        ],
    ));
    assert_eq!(h.session.vhost_name(), Some("/"));
}

#[test]
fn frames_before_connect_and_server_frames_are_refused() {
    let mut h = harness();
    let f = h.one(frame(
        Command::Send,
        &[("destination", "/queue/q"), ("receipt", "r")],
    ));
    assert_eq!(f.command, Command::Error);
    assert_eq!(header(&f, "receipt-id"), "r");
    let mut h = harness();
    h.connect("1.2");
    let f = h.one(frame(Command::Message, &[]));
    assert_eq!(header(&f, "message"), "Illegal command");
    assert!(h.session.is_done());
    assert!(
        h.send(frame(Command::Send, &[("destination", "/queue/q")]))
            .is_empty(),
        "nothing after ERROR"
    );
}

#[test]
fn send_and_subscribe_round_trip_with_receipts() {
    let mut h = harness();
    h.connect("1.1");
    let r = h.one(frame(
        Command::Subscribe,
        &[("destination", "/queue/q"), ("id", "s1"), ("receipt", "r1")],
    ));
    assert_eq!(
        (r.command, header(&r, "receipt-id")),
        (Command::Receipt, "r1")
    );
    let send = frame(
        Command::Send,
        &[
            ("destination", "/queue/q"),
            ("receipt", "r2"),
            ("content-type", "text/plain"),
            ("x-k", "v"),
        ],
    )
    .with_body(&b"hello"[..]);
    let r = h.one(send);
    assert_eq!(header(&r, "receipt-id"), "r2");
    let got = h.pump();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.command, Command::Message);
    assert_eq!(&m.body[..], b"hello");
    assert_eq!(header(m, "subscription"), "s1");
    assert_eq!(header(m, "destination"), "/queue/q");
    assert_eq!(header(m, "content-type"), "text/plain");
    assert_eq!(header(m, "x-k"), "v");
    assert!(header(m, "message-id").starts_with("T_s1@@session-"));
    assert_eq!(m.header("ack"), None, "auto ack, and 1.1 has no ack header");
}

#[test]
fn missing_headers_and_bad_destinations_are_errors() {
    for (f, message) in [
        (frame(Command::Send, &[]), "Missing header"),
        (
            frame(Command::Send, &[("destination", "/nowhere/q")]),
            "Unknown destination",
        ),
        (
            frame(Command::Send, &[("destination", "/queue/")]),
            "Invalid destination",
        ),
        (
            frame(Command::Subscribe, &[("destination", "/queue/q")]),
            "Missing header",
        ),
        (
            frame(
                Command::Subscribe,
                &[("destination", "/queue/q"), ("id", "1"), ("ack", "maybe")],
            ),
            "Invalid header",
        ),
        (frame(Command::Ack, &[]), "Missing header"),
        (frame(Command::Ack, &[("id", "made-up")]), "Invalid header"),
        (frame(Command::Begin, &[]), "Missing header"),
        (
            frame(Command::Commit, &[("transaction", "t")]),
            "Bad transaction",
        ),
        (
            frame(Command::Unsubscribe, &[("id", "nope")]),
            "No subscription found",
        ),
        (
            frame(
                Command::Subscribe,
                &[("destination", "/amq/queue/absent"), ("id", "1")],
            ),
            "not_found",
        ),
        (
            frame(Command::Send, &[("destination", "/exchange/absent/k")]),
            "not_found",
        ),
        (
            frame(
                Command::Send,
                &[("destination", "/queue/q"), ("priority", "high")],
            ),
            "Invalid header",
        ),
    ] {
        let mut h = harness();
        h.connect("1.2");
        let shown = format!("{f:?}");
        let e = h.one(f.with_header("receipt", "r"));
        assert_eq!(e.command, Command::Error, "{shown}");
        assert_eq!(header(&e, "message"), message, "{shown}");
        assert_eq!(header(&e, "receipt-id"), "r", "{shown}");
        assert!(!e.body.is_empty(), "a readable body: {shown}");
        assert!(h.session.is_done(), "{shown}");
    }
}

fn subscribe_and_fill(h: &mut Harness, ack: &str, n: usize) -> Vec<Frame> {
    h.send(frame(
        Command::Subscribe,
        &[("destination", "/queue/work"), ("id", "w"), ("ack", ack)],
    ));
    for i in 0..n {
        h.send(frame(Command::Send, &[("destination", "/queue/work")]).with_body(i.to_string()));
    }
    let got = h.pump();
    assert_eq!(got.len(), n);
    got
}

fn queue_counts(h: &Harness, name: &str) -> (usize, usize) {
    let q = h.session.vhost().queue(name).expect("queue exists");
    (q.message_count(), q.unacked_count())
}

#[test]
fn client_ack_is_cumulative_and_client_individual_is_not() {
    let mut h = harness();
    h.connect("1.2");
    let got = subscribe_and_fill(&mut h, "client", 3);
    assert_eq!(header(&got[1], "ack"), header(&got[1], "message-id"));
    assert!(
        h.send(frame(Command::Ack, &[("id", header(&got[1], "ack"))]))
            .is_empty()
    );
    assert_eq!(
        queue_counts(&h, "work"),
        (0, 1),
        "the first two are settled"
    );

    let mut h = harness();
    h.connect("1.2");
    let got = subscribe_and_fill(&mut h, "client-individual", 3);
    h.send(frame(Command::Ack, &[("id", header(&got[1], "ack"))]));
    assert_eq!(
        queue_counts(&h, "work"),
        (0, 2),
        "only the second is settled"
    );
    let e = h.one(frame(Command::Ack, &[("id", header(&got[1], "ack"))]));
    assert_eq!(
        header(&e, "message"),
        "Message not found",
        "twice is an error"
    );
}

#[test]
fn acks_use_each_versions_header() {
    for (version, name) in [("1.0", "message-id"), ("1.1", "message-id"), ("1.2", "id")] {
        let mut h = harness();
        h.connect(version);
        let got = subscribe_and_fill(&mut h, "client-individual", 1);
        let id = header(&got[0], "message-id").to_owned();
        let reply = h.send(frame(
            Command::Ack,
            &[(name, id.as_str()), ("subscription", "w"), ("receipt", "a")],
        ));
        assert_eq!(reply.len(), 1, "{version}: {reply:?}");
        assert_eq!(reply[0].command, Command::Receipt, "{version}: {reply:?}");
        assert_eq!(queue_counts(&h, "work"), (0, 0), "{version}");
    }
}

#[test]
fn nack_requeues_unless_told_not_to() {
    let mut h = harness();
    h.connect("1.2");
    let got = subscribe_and_fill(&mut h, "client-individual", 2);
    h.send(frame(Command::Nack, &[("id", header(&got[0], "ack"))]));
    let again = h.pump();
    assert_eq!(again.len(), 1, "requeued and redelivered");
    assert_eq!(&again[0].body[..], b"0");
    assert_eq!(header(&again[0], "redelivered"), "true");
    h.send(frame(
        Command::Nack,
        &[("id", header(&again[0], "ack")), ("requeue", "false")],
    ));
    assert!(h.pump().is_empty());
    assert_eq!(
        queue_counts(&h, "work"),
        (0, 1),
        "discarded; the second is still held"
    );
}

#[test]
fn prefetch_count_bounds_unacknowledged_messages() {
    let mut h = harness();
    h.connect("1.2");
    h.send(frame(
        Command::Subscribe,
        &[
            ("destination", "/queue/p"),
            ("id", "p"),
            ("ack", "client-individual"),
            ("prefetch-count", "2"),
        ],
    ));
    for _ in 0..5 {
        h.send(frame(Command::Send, &[("destination", "/queue/p")]));
    }
    let got = h.pump();
    assert_eq!(got.len(), 2);
    h.send(frame(Command::Ack, &[("id", header(&got[0], "ack"))]));
    assert_eq!(h.pump().len(), 1, "one settled, one more sent");
}

#[test]
fn transactions_hold_sends_and_acks_until_commit() {
    let mut h = harness();
    h.connect("1.2");
    let got = subscribe_and_fill(&mut h, "client-individual", 1);
    h.send(frame(Command::Begin, &[("transaction", "t")]));
    h.send(
        frame(
            Command::Send,
            &[("destination", "/queue/work"), ("transaction", "t")],
        )
        .with_body("in tx"),
    );
    h.send(frame(
        Command::Ack,
        &[("id", header(&got[0], "ack")), ("transaction", "t")],
    ));
    assert!(h.pump().is_empty(), "nothing published before COMMIT");
    assert_eq!(
        queue_counts(&h, "work"),
        (0, 1),
        "nothing settled before COMMIT"
    );
    let r = h.one(frame(
        Command::Commit,
        &[("transaction", "t"), ("receipt", "c")],
    ));
    assert_eq!(header(&r, "receipt-id"), "c");
    let got = h.pump();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[..], b"in tx");
    assert_eq!(
        queue_counts(&h, "work"),
        (0, 1),
        "the old one acked, the new one held"
    );

    h.send(frame(Command::Begin, &[("transaction", "u")]));
    h.send(frame(
        Command::Send,
        &[("destination", "/queue/work"), ("transaction", "u")],
    ));
    h.send(frame(
        Command::Ack,
        &[("id", header(&got[0], "ack")), ("transaction", "u")],
    ));
    h.send(frame(Command::Abort, &[("transaction", "u")]));
    assert!(h.pump().is_empty());
    assert_eq!(
        queue_counts(&h, "work"),
        (0, 1),
        "aborted: nothing happened"
    );
    let e = h.one(frame(
        Command::Send,
        &[("destination", "/queue/work"), ("transaction", "u")],
    ));
    assert_eq!(header(&e, "message"), "Bad transaction");
}

#[test]
fn a_receipt_for_a_persistent_send_waits_for_the_journal() {
    let log = Arc::new(Positions::default());
    let mut h = harness_with(log.clone(), "127.0.0.1:5000");
    h.connect("1.2");
    // /queue/ destinations are durable: a persistent message is journalled.
    let got = h.send(frame(
        Command::Send,
        &[
            ("destination", "/queue/d"),
            ("persistent", "true"),
            ("receipt", "p"),
        ],
    ));
    assert!(
        got.is_empty(),
        "no receipt before the journal has it: {got:?}"
    );
    assert!(h.session.awaits_durability());
    let later = h.send(frame(
        Command::Send,
        &[("destination", "/queue/d"), ("receipt", "t")],
    ));
    assert!(later.is_empty(), "receipts keep their order");
    let at = log.next.load(Ordering::Relaxed);
    let mut out = BytesMut::new();
    h.session.set_durable(at, &mut out);
    let got = h.decode(out);
    let ids: Vec<&str> = got.iter().map(|f| header(f, "receipt-id")).collect();
    assert_eq!(ids, ["p", "t"]);
    assert!(!h.session.awaits_durability());
    assert!(log.kinds.lock().unwrap().contains(&"enqueued"));
}

#[test]
fn disconnect_answers_its_receipt_and_ends_the_session() {
    let mut h = harness();
    h.connect("1.2");
    let got = subscribe_and_fill(&mut h, "client-individual", 1);
    assert_eq!(got.len(), 1);
    let r = h.one(frame(Command::Disconnect, &[("receipt", "bye")]));
    assert_eq!(
        (r.command, header(&r, "receipt-id")),
        (Command::Receipt, "bye")
    );
    assert!(h.session.is_done());
    assert_eq!(
        queue_counts(&h, "work"),
        (1, 0),
        "unacknowledged messages go back"
    );
}

#[test]
fn topic_subscriptions_get_their_own_queues_and_activemq_wildcards() {
    let mut h = harness();
    h.connect("1.2");
    h.send(frame(
        Command::Subscribe,
        &[("destination", "/topic/a.>"), ("id", "1")],
    ));
    h.send(frame(
        Command::Subscribe,
        &[("destination", "/topic/a.*"), ("id", "2")],
    ));
    h.send(frame(Command::Send, &[("destination", "/topic/a.b.c")]));
    h.send(frame(Command::Send, &[("destination", "/topic/a.b")]));
    let got = h.pump();
    let mut seen: Vec<(&str, &str)> = got
        .iter()
        .map(|f| (header(f, "subscription"), header(f, "destination")))
        .collect();
    // Order holds per subscription; between subscriptions it is the
    // routing table's.
    seen.sort_by_key(|(sub, _)| *sub);
    assert_eq!(
        seen,
        [
            ("1", "/topic/a.b.c"),
            ("1", "/topic/a.b"),
            ("2", "/topic/a.b")
        ]
    );
    h.send(frame(Command::Unsubscribe, &[("id", "1")]));
    h.send(frame(Command::Send, &[("destination", "/topic/a.b.c")]));
    assert!(
        h.pump().is_empty(),
        "the subscription and its queue are gone"
    );
}

#[test]
fn temp_queue_reply_to_subscribes_and_is_rewritten() {
    let mut h = harness();
    h.connect("1.2");
    h.send(frame(
        Command::Subscribe,
        &[("destination", "/queue/rpc"), ("id", "server")],
    ));
    h.send(frame(
        Command::Send,
        &[("destination", "/queue/rpc"), ("reply-to", "/temp-queue/r")],
    ));
    let request = h.pump();
    let reply_to = header(&request[0], "reply-to").to_owned();
    assert!(reply_to.starts_with("/reply-queue/amq.gen-"), "{reply_to}");
    h.send(frame(Command::Send, &[("destination", reply_to.as_str())]).with_body("answer"));
    let got = h.pump();
    assert_eq!(got.len(), 1);
    assert_eq!(header(&got[0], "subscription"), "/temp-queue/r");
    assert_eq!(header(&got[0], "destination"), "/temp-queue/r");
    assert_eq!(&got[0].body[..], b"answer");
}

#[test]
fn stomp_1_0_values_lose_their_leading_space() {
    let mut h = harness();
    let f = h.one(frame(
        Command::Connect,
        &[("login", " guest"), ("passcode", " guest")],
    ));
    assert_eq!(f.command, Command::Connected);
    h.send(frame(Command::Subscribe, &[("destination", " /queue/old")]));
    h.send(frame(Command::Send, &[("destination", " /queue/old")]).with_body("x"));
    let got = h.pump();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("subscription"),
        None,
        "a 1.0 SUBSCRIBE without id"
    );
    h.send(frame(
        Command::Unsubscribe,
        &[("destination", "/queue/old")],
    ));
    assert!(h.session.sub_keys.is_empty());
}

#[test]
fn deleting_a_subscribed_queue_cancels_with_an_error_that_keeps_the_connection() {
    let mut h = harness();
    h.connect("1.2");
    h.send(frame(
        Command::Subscribe,
        &[("destination", "/queue/gone"), ("id", "g")],
    ));
    h.session
        .vhost()
        .delete_queue("gone", false, false, None)
        .unwrap();
    let got = h.pump();
    assert_eq!(got.len(), 1);
    assert_eq!(header(&got[0], "message"), "Server cancelled subscription");
    assert_eq!(header(&got[0], "subscription"), "g");
    assert!(!h.session.is_done());
}

#[test]
fn shutdown_waits_for_owed_receipts_then_says_error() {
    let log = Arc::new(Positions::default());
    let mut h = harness_with(log.clone(), "127.0.0.1:5000");
    h.connect("1.2");
    h.send(frame(
        Command::Send,
        &[
            ("destination", "/queue/d"),
            ("persistent", "true"),
            ("receipt", "p"),
        ],
    ));
    let mut out = BytesMut::new();
    h.session.shutdown(&mut out);
    assert!(out.is_empty() && !h.session.is_done() && !h.session.is_reading());
    h.session
        .set_durable(log.next.load(Ordering::Relaxed), &mut out);
    let got = h.decode(out);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].command, Command::Receipt);
    assert_eq!(header(&got[1], "message"), "Server shutdown");
    assert!(h.session.is_done());
}

#[test]
fn an_auto_ack_message_in_flight_at_unsubscribe_goes_back_to_its_queue() {
    let mut h = harness();
    h.connect("1.2");
    h.send(frame(
        Command::Subscribe,
        &[("destination", "/queue/flight"), ("id", "f")],
    ));
    h.send(frame(Command::Send, &[("destination", "/queue/flight")]).with_body("in flight"));
    assert_eq!(
        queue_counts(&h, "flight"),
        (0, 1),
        "handed out, not yet written"
    );
    h.send(frame(Command::Unsubscribe, &[("id", "f")]));
    assert!(h.pump().is_empty(), "not written after UNSUBSCRIBE");
    assert_eq!(
        queue_counts(&h, "flight"),
        (1, 0),
        "back in the queue, not lost"
    );

    h.send(frame(
        Command::Subscribe,
        &[("destination", "/queue/flight"), ("id", "g")],
    ));
    assert_eq!(h.pump().len(), 1);
    assert_eq!(queue_counts(&h, "flight"), (0, 0), "settled once written");
}
