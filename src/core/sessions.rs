//! Named client sessions of one vhost.
//!
//! Some clients name their session and expect the name to be unique: a
//! second connection with the same name takes the session over and the
//! first is closed (MQTT's client id). A connection claims the name here;
//! the previous holder, if any, is sent `Event::CloseConnection`. Between
//! connections the adapter parks the session's state here, opaque to the
//! core, until the next claim resumes it or the adapter expires it.
//!
//! Each claim bumps the name's generation, so a timer started when one
//! connection ended (session expiry, a delayed will) can tell whether a
//! newer connection has come since.
//!
//! A session that outlives its connection is also recorded in the journal
//! (`Change::Session*`, through `VHost::record_session`); after a restart
//! the registry starts with each one parked, its state a `StoredSession`
//! the adapter turns back into its own on the next claim.

use std::any::Any;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::delivery::{Event, EventSink};
use super::names::ConnectionId;

/// A session's adapter-defined state, shared between the registry and the
/// connection holding it.
pub type SessionState = Arc<dyn Any + Send + Sync>;

#[derive(Debug)]
struct Holder {
    connection: ConnectionId,
    sink: EventSink,
}

struct Entry {
    holder: Option<Holder>,
    state: SessionState,
    generation: u64,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("holder", &self.holder)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// What the journal keeps of a session that outlives its connection.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StoredSession {
    /// Seconds it outlives its connection; `u32::MAX` is forever.
    pub expiry_secs: u32,
    /// When it was last parked (milliseconds since the Unix epoch);
    /// `None` if it was connected when the broker stopped.
    pub parked_at_ms: Option<u64>,
    /// Inbound ids of unfinished exchanges (Change::SessionId).
    pub inbound: BTreeSet<u16>,
    /// Outbound ids of unfinished exchanges.
    pub outbound: BTreeSet<u16>,
    /// Its will, waiting out its delay (Change::SessionWill). Not part of
    /// a checkpoint's encoding, which older journals share: the journal
    /// writes it as a record after each checkpoint instead
    /// (`Definitions::trailer`).
    #[serde(skip)]
    pub will: Option<super::change::PendingWill>,
}

/// What a claim found.
#[derive(Debug)]
pub struct Claim {
    /// The session's state: the parked one when resumed, else a fresh one.
    pub state: SessionState,
    /// An existing session was resumed.
    pub resumed: bool,
    /// This claim's generation.
    pub generation: u64,
    /// The connection that held the name until now and was told to close.
    pub displaced: Option<ConnectionId>,
}

/// One vhost's named sessions.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    // Held for map updates only, never across `.await`; taken after any
    // vhost lock and never together with a queue's lock.
    // Keyed by the adapter's own copy of the name: one idle connection
    // fewer allocations.
    entries: Mutex<HashMap<Arc<str>, Entry>>,
    /// Names with a session recorded in the journal. A leaf lock.
    stored: Mutex<HashSet<String>>,
}

impl SessionRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims a name for a connection. A current holder is told to close
    /// with `reason`. With `resume`, a parked state is kept; otherwise, or
    /// when there is none, `fresh()` becomes the state.
    pub fn claim(
        &self,
        name: &Arc<str>,
        connection: ConnectionId,
        sink: EventSink,
        resume: bool,
        reason: &str,
        fresh: impl FnOnce() -> SessionState,
    ) -> Claim {
        let mut entries = self.lock();
        let holder = Holder { connection, sink };
        match entries.get_mut(&**name) {
            Some(entry) => {
                entry.generation += 1;
                let displaced = entry.holder.replace(holder).and_then(|old| {
                    if old.connection == connection {
                        return None;
                    }
                    let _ = old.sink.send(Event::CloseConnection(reason.to_owned()));
                    Some(old.connection)
                });
                if !resume {
                    entry.state = fresh();
                }
                Claim {
                    state: entry.state.clone(),
                    resumed: resume,
                    generation: entry.generation,
                    displaced,
                }
            }
            None => {
                let state = fresh();
                entries.insert(
                    name.clone(),
                    Entry {
                        holder: Some(holder),
                        state: state.clone(),
                        generation: 1,
                    },
                );
                Claim {
                    state,
                    resumed: false,
                    generation: 1,
                    displaced: None,
                }
            }
        }
    }

    /// A connection lets go of a name. With `park` the state stays for a
    /// later claim; otherwise the name is forgotten. Does nothing, and
    /// returns `None`, when the connection no longer holds the name (it was
    /// taken over); else returns the generation to expire against.
    pub fn release(&self, name: &str, connection: ConnectionId, park: bool) -> Option<u64> {
        let mut entries = self.lock();
        let entry = entries.get_mut(name)?;
        if entry.holder.as_ref().map(|h| h.connection) != Some(connection) {
            return None;
        }
        let generation = entry.generation;
        if park {
            entry.holder = None;
        } else {
            entries.remove(name);
        }
        Some(generation)
    }

    /// Whether no claim has come since `generation`.
    pub fn is_current(&self, name: &str, generation: u64) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|e| e.generation == generation)
    }

    /// Forgets a parked session if nobody claimed it since `generation`;
    /// returns its state when it did.
    pub fn expire(&self, name: &str, generation: u64) -> Option<SessionState> {
        let mut entries = self.lock();
        let entry = entries.get(name)?;
        if entry.generation != generation || entry.holder.is_some() {
            return None;
        }
        entries.remove(name).map(|e| e.state)
    }

    /// The connection holding a name, if any.
    pub fn holder(&self, name: &str) -> Option<ConnectionId> {
        self.lock()
            .get(name)
            .and_then(|e| e.holder.as_ref().map(|h| h.connection))
    }

    /// Whether a name has a session, held or parked.
    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Marks a name as recorded in the journal (true) or not; returns
    /// whether it was.
    pub fn set_stored(&self, name: &str, stored: bool) -> bool {
        let mut set = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        if stored {
            !set.insert(name.to_owned())
        } else {
            set.remove(name)
        }
    }

    /// Whether a name has a session recorded in the journal.
    pub fn is_stored(&self, name: &str) -> bool {
        self.stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    /// Parks a session read back from the journal; returns its generation.
    pub fn park_stored(&self, name: &str, stored: StoredSession) -> u64 {
        self.set_stored(name, true);
        let mut entries = self.lock();
        let entry = entries.entry(Arc::from(name)).or_insert_with(|| Entry {
            holder: None,
            state: Arc::new(()),
            generation: 0,
        });
        entry.generation += 1;
        entry.state = Arc::new(stored);
        entry.generation
    }

    /// Every parked session: name, generation and state.
    pub fn parked(&self) -> Vec<(String, u64, SessionState)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.holder.is_none())
            .map(|(n, e)| (n.to_string(), e.generation, e.state.clone()))
            .collect()
    }

    /// Named sessions, held or parked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(n: u32) -> impl FnOnce() -> SessionState {
        move || Arc::new(n)
    }

    #[test]
    fn a_second_claim_displaces_the_first_and_parked_state_resumes() {
        let reg = SessionRegistry::default();
        let name: Arc<str> = Arc::from("c");
        let (tx1, mut rx1) = crate::core::event_channel::channel();
        let (tx2, _rx2) = crate::core::event_channel::channel();
        let a = reg.claim(&name, ConnectionId(1), tx1, true, "taken over", fresh(1));
        assert!(!a.resumed);
        assert_eq!(a.displaced, None);
        let b = reg.claim(
            &name,
            ConnectionId(2),
            tx2.clone(),
            true,
            "taken over",
            fresh(2),
        );
        assert_eq!(b.displaced, Some(ConnectionId(1)));
        assert!(matches!(rx1.try_recv(), Ok(Event::CloseConnection(r)) if r == "taken over"));
        assert_eq!(
            b.state.downcast_ref::<u32>(),
            Some(&1),
            "state carried over"
        );
        // The displaced connection's release changes nothing.
        assert_eq!(reg.release("c", ConnectionId(1), false), None);
        assert_eq!(reg.holder("c"), Some(ConnectionId(2)));
        // Parked, then resumed by a later claim; expiry against the old generation fails.
        let parked_gen = reg.release("c", ConnectionId(2), true).expect("holder");
        let c = reg.claim(&name, ConnectionId(3), tx2.clone(), true, "", fresh(3));
        assert!(c.resumed);
        assert!(reg.expire("c", parked_gen).is_none());
        // A clean claim replaces the state; a release without parking forgets it.
        let d = reg.claim(&name, ConnectionId(4), tx2, false, "", fresh(4));
        assert_eq!(d.state.downcast_ref::<u32>(), Some(&4));
        let g = reg.release("c", ConnectionId(4), true).expect("holder");
        assert!(reg.expire("c", g).is_some());
        assert!(reg.is_empty());
    }
}
