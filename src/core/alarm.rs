//! Resource alarms: when memory or free disk crosses its limit, publishers
//! are held back (AMQP connection.blocked, socket back-pressure for the
//! others) while consumers keep draining. Nothing is dropped.

use tokio::sync::watch;

/// Which alarms are raised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Alarms {
    /// Resident memory is above its limit.
    pub memory: bool,
    /// Free disk space is below its limit.
    pub disk: bool,
}

impl Alarms {
    /// Whether publishers must wait.
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// Why, in RabbitMQ's words for connection.blocked.
    pub fn reason(self) -> &'static str {
        match (self.memory, self.disk) {
            (true, true) => "low on memory and disk space",
            (true, false) => "low on memory",
            (false, true) => "low on disk space",
            (false, false) => "",
        }
    }
}

/// The broker's alarm state, watched by every connection.
#[derive(Debug)]
pub struct AlarmState {
    tx: watch::Sender<Alarms>,
}

impl Default for AlarmState {
    fn default() -> Self {
        Self {
            tx: watch::channel(Alarms::default()).0,
        }
    }
}

impl AlarmState {
    /// Follows the alarms.
    pub fn watch(&self) -> watch::Receiver<Alarms> {
        self.tx.subscribe()
    }

    /// The alarms now.
    pub fn current(&self) -> Alarms {
        *self.tx.borrow()
    }

    /// Sets the alarms, logging each change.
    pub fn set(&self, alarms: Alarms) {
        let before = self.current();
        if before == alarms {
            return;
        }
        if alarms.any() {
            tracing::warn!(
                memory = alarms.memory,
                disk = alarms.disk,
                "resource alarm: publishers are blocked"
            );
        } else {
            tracing::info!("resource alarms cleared: publishers may continue");
        }
        self.tx.send_replace(alarms);
    }
}
