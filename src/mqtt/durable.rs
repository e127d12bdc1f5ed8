//! MQTT sessions across a broker restart.
//!
//! A persistent session's queue, bindings (its subscriptions) and messages
//! are durable core state already. What only the session knows is recorded
//! here as `Change::Session*` records: that it exists and when it expires
//! (so CONNACK says session-present after a restart and an abandoned
//! session still expires), and the QoS 2 packet ids in flight, so
//! exactly-once holds across a restart: an inbound id is recorded before
//! its PUBREC goes out, so a PUBLISH resent after the restart is not routed
//! twice and its PUBREL finds the id.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::change::{Change, LogPosition, PendingWill};
use crate::core::message::now_ms;
use crate::core::sessions::{SessionState, StoredSession};
use crate::core::{Broker, QueueName, VHost};

use super::session::{Persistent, Subscription, Will, publish_will, session_queue_name};
use crate::core::exchange::Destination;
use crate::core::retained::RETAINING_EXCHANGE;

/// The session state for a claim that found a session read back from the
/// journal: its subscriptions from its queue's bindings, its packet ids
/// from the journal. `None` when `state` is no such session.
pub(super) fn resume(
    vhost: &VHost,
    client_id: &str,
    state: &SessionState,
) -> Option<Arc<Mutex<Persistent>>> {
    let stored = state.downcast_ref::<StoredSession>()?;
    let dest = Destination::Queue(session_queue_name(client_id));
    let subscriptions = vhost
        .bindings_to(&dest)
        .iter()
        .filter(|b| b.source.as_str() == RETAINING_EXCHANGE)
        .filter_map(Subscription::from_binding)
        .collect();
    Some(Arc::new(Mutex::new(Persistent {
        subscriptions,
        incoming_qos2: stored.inbound.iter().copied().collect(),
        released: stored.outbound.iter().copied().collect(),
        durable: true,
    })))
}

/// CONNACK is about to go out: a session that outlives its connection is
/// recorded (fresh unless resumed); one that does not ends any recorded
/// session of the same client id. A session resumed with an expiry of 0
/// that `keeps_queue` is recorded with that expiry, so a restart before its
/// connection ends expires it and deletes the queue. Returns the journal
/// position CONNACK must wait for, if anything was recorded.
pub(super) fn connected(
    vhost: &VHost,
    client_id: &str,
    expiry_secs: u32,
    present: bool,
    keeps_queue: bool,
) -> Option<LogPosition> {
    let name = client_id.to_owned();
    let logged = vhost.record_session(if expiry_secs > 0 || keeps_queue {
        Change::SessionOpened {
            name,
            expiry_secs,
            fresh: !present,
        }
    } else {
        Change::SessionEnded { name }
    });
    logged.map(|l| l.seq)
}

/// The connection ended: a parked session records when it expires, one
/// that ended with its connection is forgotten. `parked` is `None` when
/// another connection took the session over.
pub(super) fn released(vhost: &VHost, client_id: &str, expiry_secs: u32, parked: Option<u64>) {
    if parked.is_none() {
        return;
    }
    let name = client_id.to_owned();
    vhost.record_session(if expiry_secs > 0 {
        Change::SessionParked {
            name,
            expiry_secs,
            at_ms: now_ms(),
        }
    } else {
        Change::SessionEnded { name }
    });
}

/// A QoS 2 packet id was taken (`held`) or let go; returns the journal
/// position an acknowledgement must wait for.
pub(super) fn packet_id(
    vhost: &VHost,
    client_id: &str,
    outbound: bool,
    id: u16,
    held: bool,
) -> Option<LogPosition> {
    vhost
        .record_session(Change::SessionId {
            name: client_id.to_owned(),
            outbound,
            id,
            held,
        })
        .map(|l| l.seq)
}

/// A parked session's will waits out its delay: recorded, so a restart
/// in the meantime still publishes it when it is due.
pub(super) fn will_waits(vhost: &VHost, client_id: &str, will: &Will) {
    vhost.record_session(Change::SessionWill {
        name: client_id.to_owned(),
        will: Some(PendingWill {
            due_ms: now_ms() + u64::from(will.delay) * 1000,
            message: will.message.clone(),
        }),
    });
}

/// The will went out.
pub(super) fn will_sent(vhost: &VHost, client_id: &str) {
    vhost.record_session(Change::SessionWill {
        name: client_id.to_owned(),
        will: None,
    });
}

/// Expires a parked session if no connection claimed it since
/// `generation`: its queue goes, and so does its record.
pub fn expire(vhost: &VHost, client_id: &str, generation: u64, queue: Option<&QueueName>) {
    if vhost.sessions().expire(client_id, generation).is_none() {
        return;
    }
    if let Some(q) = queue {
        let _ = vhost.delete_queue(q.as_str(), false, false, None);
    }
    vhost.record_session(Change::SessionEnded {
        name: client_id.to_owned(),
    });
}

/// Starts the timers of the sessions read back from the journal: a will
/// still waiting goes out when it is due (at once if that passed while
/// the broker was down), and the session expires counted from when it
/// was parked (from now if it was connected when the broker stopped).
/// A session whose queue is gone ends at once, its will sent first.
pub fn expire_recovered(broker: &Broker) {
    for vhost in broker.vhosts() {
        for (name, generation, state) in vhost.sessions().parked() {
            let Some(stored) = state.downcast_ref::<StoredSession>() else {
                continue;
            };
            let queue = session_queue_name(&name);
            let will = stored.will.clone();
            if vhost.queue(queue.as_str()).is_none() {
                if let Some(w) = &will {
                    send_recovered_will(&vhost, &name, w);
                }
                expire(&vhost, &name, generation, None);
                continue;
            }
            let expires = (stored.expiry_secs != u32::MAX).then(|| {
                stored.parked_at_ms.unwrap_or_else(now_ms) + u64::from(stored.expiry_secs) * 1000
            });
            if will.is_none() && expires.is_none() {
                continue;
            }
            let vhost = vhost.clone();
            tokio::spawn(async move {
                if let Some(w) = will {
                    tokio::time::sleep(until(w.due_ms)).await;
                    if vhost.sessions().is_current(&name, generation) {
                        send_recovered_will(&vhost, &name, &w);
                    }
                }
                if let Some(at) = expires {
                    tokio::time::sleep(until(at)).await;
                    expire(&vhost, &name, generation, Some(&queue));
                }
            });
        }
    }
}

/// Time left until `at_ms` (milliseconds since the Unix epoch).
fn until(at_ms: u64) -> Duration {
    Duration::from_millis(at_ms.saturating_sub(now_ms()))
}

fn send_recovered_will(vhost: &VHost, client_id: &str, will: &PendingWill) {
    publish_will(
        vhost,
        &Will {
            message: will.message.clone(),
            delay: 0,
        },
    );
    will_sent(vhost, client_id);
}
