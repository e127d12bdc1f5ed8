//! One vhost: its exchanges, queues and bindings.
//!
//! Lock order (never take them the other way round):
//! `meta` → `queues` → `routes` → one queue's own lock.
//! A publish takes only `routes` (read, to clone the snapshot), `queues`
//! (read, for the default exchange) and the target queues' locks, one at a
//! time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use tokio::time::Instant;

use super::binding_index::BindingIndex;
use super::change::{Change, ChangeLog, Logged};
use super::error::{CoreError, CoreResult};
use super::exchange::{BindingSpec, Destination, Exchange, ExchangeKind, ExchangeSpec, Target};
use super::message::{Headers, Message, Value};
use super::names::{ConnectionId, ConsumerId, ExchangeName, QueueName, VHostName};
use super::queue::{Aftermath, ConsumerSpec, DeadLetter, Queue, QueueArgs, QueueLog, QueueSpec};
use super::retained::RetainedStore;
use super::sessions::SessionRegistry;
use super::stats::Stats;

/// Exchanges every vhost has, as RabbitMQ predeclares them.
const STANDARD_EXCHANGES: [(&str, ExchangeKind); 6] = [
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// How deep exchange-to-exchange bindings and alternate exchanges may
/// chain before routing gives up (cycles are also cut by a visited set).
const MAX_ROUTE_DEPTH: usize = 32;

type Routes = HashMap<ExchangeName, Arc<Exchange>>;

thread_local! {
    /// A publish's list of target queues, kept on the thread between
    /// publishes: built from empty, a fan-out to ten queues reallocated
    /// it four times per message (3 % of a fan-out profile).
    static TARGETS: std::cell::Cell<Vec<Arc<Queue>>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A target list that grew past this many queues is not kept.
const KEEP_TARGETS: usize = 1024;

/// The exchanges one route has passed through, on the stack: routing
/// allocates nothing for it, and compares addresses rather than names.
struct Visited {
    seen: [*const Exchange; MAX_ROUTE_DEPTH],
    len: usize,
}

impl Default for Visited {
    fn default() -> Self {
        Self {
            seen: [std::ptr::null(); MAX_ROUTE_DEPTH],
            len: 0,
        }
    }
}

impl Visited {
    /// Records `exchange`; false if it was seen already or the route is
    /// as deep as it may go.
    fn enter(&mut self, exchange: &Exchange) -> bool {
        let at: *const Exchange = exchange;
        if self.len >= MAX_ROUTE_DEPTH || self.seen[..self.len].contains(&at) {
            return false;
        }
        self.seen[self.len] = at;
        self.len += 1;
        true
    }
}

#[derive(Debug, Default)]
struct Meta {
    exchanges: HashMap<ExchangeName, ExchangeSpec>,
    bindings: BindingIndex,
}

/// What a publish did.
#[derive(Debug, Default, Clone)]
pub struct PublishOutcome {
    /// Queues that took the message.
    pub queues: usize,
    /// Some queue refused it (x-overflow reject-publish): confirm with a nack.
    pub rejected: bool,
    /// The journal position the confirm must wait for, if any queue
    /// journalled it.
    pub durable_at: Option<super::change::LogPosition>,
    /// A queue it went to whose consumers are behind: the publisher should
    /// wait for them (`Queue::caught_up`) before it reads more.
    pub behind: Option<Arc<Queue>>,
}

/// The result of a queue declaration.
#[derive(Debug, Clone)]
pub struct QueueDeclared {
    /// The queue's name (chosen by the broker when asked for "").
    pub name: QueueName,
    /// Ready messages.
    pub messages: usize,
    /// Consumers.
    pub consumers: usize,
}

/// One vhost.
#[derive(Debug)]
pub struct VHost {
    name: VHostName,
    me: Weak<VHost>,
    meta: Mutex<Meta>,
    queues: RwLock<HashMap<QueueName, Arc<Queue>>>,
    routes: RwLock<Arc<Routes>>,
    journal: Arc<dyn ChangeLog>,
    retained: RetainedStore,
    sessions: SessionRegistry,
    stats: Arc<Stats>,
}

fn inequivalent(
    what: &str,
    kind: &str,
    name: &str,
    vhost: &VHostName,
    got: String,
    have: String,
) -> CoreError {
    CoreError::PreconditionFailed(format!(
        "inequivalent arg '{what}' for {kind} '{name}' in vhost '{vhost}': received '{got}' but current is '{have}'"
    ))
}

impl VHost {
    /// Creates a vhost with the standard exchanges.
    pub fn new(name: VHostName, journal: Arc<dyn ChangeLog>) -> Arc<Self> {
        Self::with_stats(name, journal, Arc::new(Stats::default()))
    }

    /// As `new`, with its queues counting into `stats`.
    pub fn with_stats(
        name: VHostName,
        journal: Arc<dyn ChangeLog>,
        stats: Arc<Stats>,
    ) -> Arc<Self> {
        let vhost = Arc::new_cyclic(|me| Self {
            name,
            me: me.clone(),
            meta: Mutex::new(Meta::default()),
            queues: RwLock::new(HashMap::new()),
            routes: RwLock::new(Arc::new(Routes::new())),
            journal,
            retained: RetainedStore::default(),
            sessions: SessionRegistry::default(),
            stats,
        });
        {
            let mut meta = vhost.meta();
            for (name, kind) in STANDARD_EXCHANGES {
                let spec = ExchangeSpec {
                    name: name.into(),
                    kind,
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: Headers::new(),
                };
                meta.exchanges.insert(spec.name.clone(), spec);
            }
            let names: Vec<ExchangeName> = meta.exchanges.keys().cloned().collect();
            vhost.rebuild(&meta, &names);
        }
        vhost
    }

    /// Its name.
    pub fn name(&self) -> &VHostName {
        &self.name
    }

    /// Its retained messages (retained.rs).
    pub fn retained(&self) -> &RetainedStore {
        &self.retained
    }

    /// Its named client sessions (sessions.rs).
    pub fn sessions(&self) -> &SessionRegistry {
        &self.sessions
    }

    /// Records a change of a named session that outlives its connection
    /// (`Change::Session*`); returns where it went. An end or an id of a
    /// session that was never recorded records nothing.
    pub fn record_session(&self, change: Change) -> Option<Logged> {
        match &change {
            Change::SessionOpened { name, .. } | Change::SessionParked { name, .. } => {
                self.sessions.set_stored(name, true);
            }
            Change::SessionEnded { name } if !self.sessions.set_stored(name, false) => {
                return None;
            }
            Change::SessionId { name, .. } | Change::SessionWill { name, .. }
                if !self.sessions.is_stored(name) =>
            {
                return None;
            }
            _ => {}
        }
        self.journal.record(&self.name, change)
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queues_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<QueueName, Arc<Queue>>> {
        self.queues.read().unwrap_or_else(|p| p.into_inner())
    }

    fn queues_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<QueueName, Arc<Queue>>> {
        self.queues.write().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self) -> Arc<Routes> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuilds the named exchanges' tables from `meta` (a missing one is
    /// dropped) and swaps in a new snapshot. For declaring and deleting
    /// exchanges; single bindings go through `bind_in_table`.
    fn rebuild(&self, meta: &Meta, changed: &[ExchangeName]) {
        let queues = self.queues_read();
        let mut routes: Routes = (*self.snapshot()).clone();
        for name in changed {
            let Some(spec) = meta.exchanges.get(name) else {
                routes.remove(name);
                continue;
            };
            let bound = meta.bindings.from_source(name).into_iter().filter_map(|b| {
                let target = resolve(&queues, &b.destination)?;
                Some((b, target))
            });
            // Binding arguments were checked when the binding was made.
            if let Ok(exchange) = Exchange::compile(spec.clone(), bound) {
                routes.insert(name.clone(), Arc::new(exchange));
            }
        }
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
    }

    /// Adds one binding (already in `meta`) to its exchange's table.
    fn bind_in_table(&self, spec: &BindingSpec) {
        let target = resolve(&self.queues_read(), &spec.destination);
        if let (Some(exchange), Some(target)) = (self.snapshot().get(&spec.source), target) {
            // Binding arguments were checked when the binding was made.
            let _ = exchange.add(spec.clone(), target);
        }
    }

    /// Removes one binding (already gone from `meta`) from its exchange's table.
    fn unbind_in_table(&self, spec: &BindingSpec) {
        if let Some(exchange) = self.snapshot().get(&spec.source) {
            exchange.remove(spec);
        }
    }

    /// Looks up a queue.
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues_read().get(name).cloned()
    }

    /// All queues, for listings.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        let mut all = self.queues_unsorted();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// All queues, in no particular order.
    pub fn queues_unsorted(&self) -> Vec<Arc<Queue>> {
        self.queues_read().values().cloned().collect()
    }

    /// All exchanges, for listings.
    pub fn exchanges(&self) -> Vec<ExchangeSpec> {
        let mut all: Vec<_> = self.meta().exchanges.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The bindings to one queue or exchange.
    pub fn bindings_to(&self, destination: &Destination) -> Vec<BindingSpec> {
        self.meta().bindings.to_destination(destination)
    }

    /// All bindings, for listings, ordered by source, destination and key.
    pub fn bindings(&self) -> Vec<BindingSpec> {
        self.meta().bindings.all()
    }

    /// Looks up an exchange's declared shape.
    pub fn exchange(&self, name: &str) -> Option<ExchangeSpec> {
        self.meta().exchanges.get(name).cloned()
    }

    /// Declares an exchange, or checks an existing one is equivalent.
    pub fn declare_exchange(&self, spec: ExchangeSpec, passive: bool) -> CoreResult<()> {
        let mut meta = self.meta();
        if let Some(have) = meta.exchanges.get(&spec.name) {
            if passive {
                return Ok(());
            }
            let name = spec.name.as_str();
            let check = |what: &str, got: String, have: String| {
                if got == have {
                    Ok(())
                } else {
                    Err(inequivalent(what, "exchange", name, &self.name, got, have))
                }
            };
            check("type", spec.kind.as_str().into(), have.kind.as_str().into())?;
            check(
                "durable",
                spec.durable.to_string(),
                have.durable.to_string(),
            )?;
            check(
                "auto_delete",
                spec.auto_delete.to_string(),
                have.auto_delete.to_string(),
            )?;
            check(
                "internal",
                spec.internal.to_string(),
                have.internal.to_string(),
            )?;
            check(
                "arguments",
                format!("{:?}", spec.arguments),
                format!("{:?}", have.arguments),
            )?;
            return Ok(());
        }
        if passive {
            return Err(CoreError::NotFound(format!(
                "no exchange '{}' in vhost '{}'",
                spec.name, self.name
            )));
        }
        if spec.name.as_str().starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        if let Some(Value::Str(_)) | None = spec.arguments.get("alternate-exchange") {
        } else {
            return Err(CoreError::InvalidArgument(
                "invalid arg 'alternate-exchange'".into(),
            ));
        }
        if spec.durable {
            self.journal
                .record(&self.name, Change::ExchangeDeclared(spec.clone()));
        }
        let name = spec.name.clone();
        meta.exchanges.insert(name.clone(), spec);
        self.rebuild(&meta, &[name]);
        Ok(())
    }

    /// Deletes an exchange and every binding to or from it. Deleting one
    /// that does not exist succeeds, as in RabbitMQ.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> CoreResult<()> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "operation not permitted on the default exchange or exchange '{name}'"
            )));
        }
        let mut meta = self.meta();
        let Some(spec) = meta.exchanges.get(name).cloned() else {
            return Ok(());
        };
        if if_unused && meta.bindings.has_source(&spec.name) {
            return Err(CoreError::PreconditionFailed(format!(
                "exchange '{name}' in use"
            )));
        }
        self.remove_exchange(&mut meta, &spec);
        Ok(())
    }

    fn remove_exchange(&self, meta: &mut Meta, spec: &ExchangeSpec) {
        let name = spec.name.clone();
        meta.exchanges.remove(&name);
        for b in meta.bindings.from_source(&name) {
            meta.bindings.remove(&b);
        }
        let to_it = meta
            .bindings
            .to_destination(&Destination::Exchange(name.clone()));
        for b in &to_it {
            meta.bindings.remove(b);
            self.unbind_in_table(b);
        }
        if spec.durable {
            self.journal
                .record(&self.name, Change::ExchangeDeleted(name.clone()));
        }
        self.rebuild(meta, &[name]);
        let sources: Vec<ExchangeName> = to_it.into_iter().map(|b| b.source).collect();
        self.auto_delete_exchanges(meta, &sources);
    }

    /// Declares a queue, or checks an existing one is equivalent and usable
    /// by connection `by`. As in RabbitMQ, a passive declare needs only
    /// access (the owner's, for an exclusive queue); a full one also needs
    /// the same exclusive flag, else the queue is locked (405) to it.
    pub fn declare_queue(
        &self,
        mut spec: QueueSpec,
        passive: bool,
        by: Option<ConnectionId>,
    ) -> CoreResult<QueueDeclared> {
        let mut meta = self.meta();
        if spec.name.as_str().is_empty() {
            spec.name = QueueName::from(format!("amq.gen-{}", random_suffix()));
        }
        let existing = self.queue(spec.name.as_str());
        if let Some(q) = existing {
            check_exclusive(&q, by)?;
            if !passive && q.spec().exclusive != spec.exclusive {
                return Err(CoreError::ResourceLocked(format!(
                    "cannot obtain exclusive access to locked queue '{}': \
                     the exclusive flag differs from the original declaration",
                    q.name()
                )));
            }
            if !passive {
                let have = q.spec();
                let name = spec.name.as_str();
                let check = |what: &str, got: String, have: String| {
                    if got == have {
                        Ok(())
                    } else {
                        Err(inequivalent(what, "queue", name, &self.name, got, have))
                    }
                };
                check(
                    "durable",
                    spec.durable.to_string(),
                    have.durable.to_string(),
                )?;
                check(
                    "exclusive",
                    spec.exclusive.is_some().to_string(),
                    have.exclusive.is_some().to_string(),
                )?;
                check(
                    "auto_delete",
                    spec.auto_delete.to_string(),
                    have.auto_delete.to_string(),
                )?;
                for key in spec.arguments.keys().chain(have.arguments.keys()) {
                    let (got, had) = (spec.arguments.get(key), have.arguments.get(key));
                    let same = match (got, had) {
                        (Some(a), Some(b)) => {
                            a.as_i64().zip(b.as_i64()).map_or(a == b, |(x, y)| x == y)
                        }
                        (None, None) => true,
                        _ => false,
                    };
                    if !same {
                        return Err(inequivalent(
                            key,
                            "queue",
                            name,
                            &self.name,
                            got.map_or("none".into(), |v| format!("{v:?}")),
                            had.map_or("none".into(), |v| format!("{v:?}")),
                        ));
                    }
                }
            }
            q.touch();
            return Ok(QueueDeclared {
                name: q.name().clone(),
                messages: q.message_count(),
                consumers: q.consumer_count(),
            });
        }
        if passive {
            return Err(CoreError::NotFound(format!(
                "no queue '{}' in vhost '{}'",
                spec.name, self.name
            )));
        }
        if spec.name.as_str().starts_with("amq.") && !spec.name.as_str().starts_with("amq.gen-") {
            return Err(CoreError::AccessRefused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        let args = QueueArgs::parse(&spec.arguments)?;
        Ok(self.create_queue(&mut meta, spec, args))
    }

    /// Creates a queue the broker itself names and owns (direct reply-to).
    pub fn declare_internal_queue(&self, spec: QueueSpec) -> Arc<Queue> {
        let mut meta = self.meta();
        let name = spec.name.clone();
        self.create_queue(&mut meta, spec, QueueArgs::default());
        self.queue(name.as_str()).expect("just created")
    }

    fn create_queue(&self, _locked: &mut Meta, spec: QueueSpec, args: QueueArgs) -> QueueDeclared {
        let uid = super::names::next_id();
        self.install_queue(spec, args, uid, true)
    }

    /// Puts a queue in the table and starts its timer. `record` is false
    /// when the queue comes back from the journal.
    fn install_queue(
        &self,
        spec: QueueSpec,
        args: QueueArgs,
        uid: u64,
        record: bool,
    ) -> QueueDeclared {
        let journalled = spec.durable && spec.exclusive.is_none();
        if journalled && record {
            self.journal.record(
                &self.name,
                Change::QueueDeclared {
                    uid,
                    spec: spec.clone(),
                },
            );
        }
        let log = journalled.then(|| QueueLog {
            vhost: self.name.clone(),
            log: self.journal.clone(),
        });
        let name = spec.name.clone();
        let queue = Queue::create_with_stats(spec, args, uid, log, self.stats.clone());
        self.queues_write().insert(name.clone(), queue.clone());
        if let Some(me) = self.me.upgrade()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            tokio::spawn(run_timer(Arc::downgrade(&me), queue));
        }
        QueueDeclared {
            name,
            messages: 0,
            consumers: 0,
        }
    }

    /// Re-creates a durable exchange read back from the journal.
    pub fn restore_exchange(&self, spec: ExchangeSpec) {
        let mut meta = self.meta();
        let name = spec.name.clone();
        meta.exchanges.insert(name.clone(), spec);
        self.rebuild(&meta, &[name]);
    }

    /// Re-creates a durable queue and its messages read back from the journal.
    pub fn restore_queue(
        &self,
        spec: QueueSpec,
        uid: u64,
        messages: impl IntoIterator<Item = super::queue::Restored>,
    ) {
        let _meta = self.meta();
        let args = QueueArgs::parse(&spec.arguments).unwrap_or_default();
        let name = spec.name.clone();
        self.install_queue(spec, args, uid, false);
        if let Some(q) = self.queue(name.as_str()) {
            q.restore(messages);
        }
    }

    /// Re-creates a binding read back from the journal.
    pub fn restore_binding(&self, spec: BindingSpec) {
        let mut meta = self.meta();
        if meta.bindings.insert(spec.clone()) {
            self.bind_in_table(&spec);
        }
    }

    /// Deletes a queue. Deleting one that does not exist succeeds with 0.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        by: Option<ConnectionId>,
    ) -> CoreResult<usize> {
        let Some(queue) = self.queue(name) else {
            return Ok(0);
        };
        check_exclusive(&queue, by)?;
        queue.check_delete(if_unused, if_empty)?;
        Ok(self.remove_queue(&queue))
    }

    fn remove_queue(&self, queue: &Arc<Queue>) -> usize {
        let mut meta = self.meta();
        let name = queue.name().clone();
        {
            let mut queues = self.queues_write();
            match queues.get(&name) {
                Some(q) if Arc::ptr_eq(q, queue) => {
                    queues.remove(&name);
                }
                _ => return 0,
            }
        }
        let n = queue.mark_deleted();
        let dest = Destination::Queue(name.clone());
        let mut changed = Vec::new();
        for b in meta.bindings.to_destination(&dest) {
            meta.bindings.remove(&b);
            self.unbind_in_table(&b);
            changed.push(b.source);
        }
        if queue.spec().durable && queue.spec().exclusive.is_none() {
            self.journal.record(
                &self.name,
                Change::QueueDeleted {
                    name,
                    uid: queue.uid(),
                },
            );
        }
        self.auto_delete_exchanges(&mut meta, &changed);
        n
    }

    fn auto_delete_exchanges(&self, meta: &mut Meta, candidates: &[ExchangeName]) {
        for name in candidates {
            let Some(spec) = meta.exchanges.get(name).cloned() else {
                continue;
            };
            if spec.auto_delete && !meta.bindings.has_source(name) {
                self.remove_exchange(meta, &spec);
            }
        }
    }

    /// Drops a queue's ready messages.
    pub fn purge_queue(&self, name: &str, by: Option<ConnectionId>) -> CoreResult<usize> {
        let queue = self.existing_queue(name)?;
        check_exclusive(&queue, by)?;
        Ok(queue.purge())
    }

    /// Looks up a queue or says it is missing.
    pub fn existing_queue(&self, name: &str) -> CoreResult<Arc<Queue>> {
        self.queue(name).ok_or_else(|| {
            CoreError::NotFound(format!("no queue '{name}' in vhost '{}'", self.name))
        })
    }

    fn check_binding(
        &self,
        meta: &Meta,
        spec: &BindingSpec,
        by: Option<ConnectionId>,
    ) -> CoreResult<()> {
        if spec.source.as_str().is_empty()
            || spec.destination == Destination::Exchange(ExchangeName::from(""))
        {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        let source = meta.exchanges.get(&spec.source).ok_or_else(|| {
            CoreError::NotFound(format!(
                "no exchange '{}' in vhost '{}'",
                spec.source, self.name
            ))
        })?;
        match &spec.destination {
            Destination::Queue(q) => check_exclusive(&*self.existing_queue(q.as_str())?, by)?,
            Destination::Exchange(e) => {
                if !meta.exchanges.contains_key(e) {
                    return Err(CoreError::NotFound(format!(
                        "no exchange '{e}' in vhost '{}'",
                        self.name
                    )));
                }
            }
        }
        Exchange::check_binding(source.kind, &spec.arguments)
    }

    /// Adds a binding; binding twice is a no-op.
    pub fn bind(&self, spec: BindingSpec, by: Option<ConnectionId>) -> CoreResult<()> {
        let mut meta = self.meta();
        self.check_binding(&meta, &spec, by)?;
        if meta.bindings.contains(&spec) {
            return Ok(());
        }
        if self.binding_is_durable(&meta, &spec) {
            self.journal.record(&self.name, Change::Bound(spec.clone()));
        }
        meta.bindings.insert(spec.clone());
        self.bind_in_table(&spec);
        Ok(())
    }

    /// Removes a binding; removing one that does not exist succeeds.
    pub fn unbind(&self, spec: &BindingSpec, by: Option<ConnectionId>) -> CoreResult<()> {
        let mut meta = self.meta();
        self.check_binding(&meta, spec, by)?;
        if !meta.bindings.remove(spec) {
            return Ok(());
        }
        if self.binding_is_durable(&meta, spec) {
            self.journal
                .record(&self.name, Change::Unbound(spec.clone()));
        }
        self.unbind_in_table(spec);
        self.auto_delete_exchanges(&mut meta, std::slice::from_ref(&spec.source));
        Ok(())
    }

    fn binding_is_durable(&self, meta: &Meta, spec: &BindingSpec) -> bool {
        let source = meta.exchanges.get(&spec.source).is_some_and(|e| e.durable);
        let dest = match &spec.destination {
            Destination::Queue(q) => self.queue(q.as_str()).is_some_and(|q| q.spec().durable),
            Destination::Exchange(e) => meta.exchanges.get(e).is_some_and(|e| e.durable),
        };
        source && dest
    }

    /// Routes a message through its exchange into every matching queue.
    pub fn publish(&self, message: Message) -> CoreResult<PublishOutcome> {
        let routes = self.snapshot();
        let exchange = routes.get(message.exchange()).ok_or_else(|| {
            CoreError::NotFound(format!(
                "no exchange '{}' in vhost '{}'",
                message.exchange(),
                self.name
            ))
        })?;
        if exchange.spec.internal {
            return Err(CoreError::AccessRefused(format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                message.exchange(),
                self.name
            )));
        }
        let mut targets = TARGETS.take();
        self.collect(
            &routes,
            exchange,
            &message,
            &mut targets,
            &mut Visited::default(),
        );
        let retained = self
            .retained
            .offer_recorded(exchange.spec.name.as_str(), &message, |change| {
                self.journal.record(&self.name, change)
            })
            .flatten();
        let mut outcome = self.deliver(&targets, message, false);
        targets.clear();
        if targets.capacity() <= KEEP_TARGETS {
            TARGETS.set(targets);
        }
        // The confirm also promises the retained copy.
        outcome.durable_at = outcome.durable_at.max(retained.map(|l| l.seq));
        Ok(outcome)
    }

    fn deliver(
        &self,
        targets: &[Arc<Queue>],
        message: Message,
        dead_lettered: bool,
    ) -> PublishOutcome {
        let mut outcome = PublishOutcome::default();
        let mut dead = Vec::new();
        let mut message = Some(message);
        for (i, queue) in targets.iter().enumerate() {
            let Some(m) = &message else { break };
            if dead_lettered && dead_letter_cycle(m, queue.name().as_str()) {
                continue;
            }
            // The last queue takes the message itself: one count operation
            // fewer on a line other threads share.
            let copy = if i + 1 == targets.len() {
                message.take().expect("checked above")
            } else {
                m.clone()
            };
            let mut result = queue.enqueue(copy);
            outcome.durable_at = outcome.durable_at.max(result.durable_at);
            if result.behind && outcome.behind.is_none() {
                outcome.behind = Some(queue.clone());
            }
            if result.rejected {
                outcome.rejected = true;
            } else {
                outcome.queues += 1;
            }
            dead.append(&mut result.dead);
        }
        self.route_dead(dead);
        outcome
    }

    /// Collects the queues a message goes to, following exchange-to-exchange
    /// bindings and alternate exchanges.
    fn collect(
        &self,
        routes: &Routes,
        exchange: &Exchange,
        message: &Message,
        out: &mut Vec<Arc<Queue>>,
        visited: &mut Visited,
    ) {
        if !visited.enter(exchange) {
            return;
        }
        let before = out.len();
        let key = message.routing_key().as_str();
        if exchange.spec.name.as_str().is_empty() {
            if let Some(q) = self.queue(key) {
                out.push(q);
            }
        } else {
            let mut next = Vec::new();
            // A fan-out to thousands of queues must not compare each with
            // all before it: past a few, a set of addresses remembers them.
            let mut seen: Option<HashSet<*const Queue>> = None;
            exchange.route(key, &message.properties().headers, |t| match t {
                Target::Queue(q) => {
                    let fresh = match &mut seen {
                        Some(set) => set.insert(Arc::as_ptr(q)),
                        None if out.len() < 16 => !out.iter().any(|have| Arc::ptr_eq(have, q)),
                        None => {
                            let set = seen.insert(out.iter().map(Arc::as_ptr).collect());
                            set.insert(Arc::as_ptr(q))
                        }
                    };
                    if fresh {
                        out.push(q.clone());
                    }
                }
                Target::Exchange(e) => next.push(e.clone()),
            });
            for name in next {
                if let Some(e) = routes.get(&name) {
                    self.collect(routes, e, message, out, visited);
                }
            }
        }
        if out.len() == before
            && let Some(alt) = exchange.alternate.as_ref().and_then(|a| routes.get(a))
        {
            self.collect(routes, alt, message, out, visited);
        }
    }

    /// Republishes dead letters to their exchanges. Called with no queue
    /// lock held.
    pub fn route_dead(&self, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        let routes = self.snapshot();
        for dl in dead {
            let Some(exchange) = routes.get(&dl.exchange) else {
                continue;
            };
            let mut targets = Vec::new();
            self.collect(
                &routes,
                exchange,
                &dl.message,
                &mut targets,
                &mut Visited::default(),
            );
            self.deliver(&targets, dl.message, true);
        }
    }

    /// Finishes what a queue operation left: dead letters, auto-delete.
    pub fn settle_aftermath(&self, queue: &Arc<Queue>, after: Aftermath) {
        self.route_dead(after.dead);
        if after.delete_queue {
            self.remove_queue(queue);
        }
    }

    /// Attaches a consumer to a queue.
    pub fn consume(&self, queue: &str, spec: ConsumerSpec) -> CoreResult<Arc<Queue>> {
        let q = self.existing_queue(queue)?;
        check_exclusive(&q, Some(spec.owner))?;
        let after = q.consume(spec)?;
        self.settle_aftermath(&q, after);
        Ok(q)
    }

    /// Detaches a consumer.
    pub fn cancel(&self, queue: &Arc<Queue>, consumer: ConsumerId) {
        let after = queue.cancel(consumer);
        self.settle_aftermath(queue, after);
    }

    /// Detaches a consumer whose channel or connection is closing and
    /// requeues everything still outstanding to it.
    pub fn cancel_and_requeue(&self, queue: &Arc<Queue>, consumer: ConsumerId) {
        let after = queue.cancel_and_requeue(consumer);
        self.settle_aftermath(queue, after);
    }

    /// Deletes the exclusive queues a closed connection owned.
    pub fn connection_closed(&self, conn: ConnectionId) {
        let owned: Vec<Arc<Queue>> = self
            .queues_read()
            .values()
            .filter(|q| q.spec().exclusive == Some(conn))
            .cloned()
            .collect();
        for q in owned {
            self.remove_queue(&q);
        }
    }
}

/// What a binding's destination is in a routing table, if it exists.
fn resolve(queues: &HashMap<QueueName, Arc<Queue>>, d: &Destination) -> Option<Target> {
    match d {
        Destination::Queue(q) => Some(Target::Queue(queues.get(q)?.clone())),
        Destination::Exchange(e) => Some(Target::Exchange(e.clone())),
    }
}

fn check_exclusive(queue: &Queue, by: Option<ConnectionId>) -> CoreResult<()> {
    match queue.spec().exclusive {
        Some(owner) if Some(owner) != by => Err(CoreError::ResourceLocked(format!(
            "cannot obtain exclusive access to locked queue '{}'",
            queue.name()
        ))),
        _ => Ok(()),
    }
}

/// A dead letter returning to a queue it already died in, with no
/// rejection along the way, would loop forever (RabbitMQ drops it too).
fn dead_letter_cycle(message: &Message, queue: &str) -> bool {
    let Some(Value::Array(deaths)) = message.properties().headers.get("x-death") else {
        return false;
    };
    let mut seen = false;
    for d in deaths {
        let Value::Table(t) = d else { continue };
        if t.get("reason").and_then(Value::as_str) == Some("rejected") {
            return false;
        }
        if t.get("queue").and_then(Value::as_str) == Some(queue) {
            seen = true;
        }
    }
    seen
}

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..22)
        .map(|_| {
            let n = rng.random_range(0..64u8);
            char::from(match n {
                0..=25 => b'A' + n,
                26..=51 => b'a' + n - 26,
                52..=61 => b'0' + n - 52,
                62 => b'-',
                _ => b'_',
            })
        })
        .collect()
}

/// Drives a queue's deadlines: per-message and queue TTL at the head, and
/// x-expires. Ends when the queue or vhost is gone.
async fn run_timer(vhost: Weak<VHost>, queue: Arc<Queue>) {
    loop {
        if queue.is_deleted() {
            return;
        }
        let Some(v) = vhost.upgrade() else { return };
        let (after, next) = queue.expire(Instant::now());
        v.settle_aftermath(&queue, after);
        drop(v);
        let notified = queue.timer.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = notified => {}
                }
            }
            None => notified.await,
        }
    }
}
