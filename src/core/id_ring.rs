//! Entries keyed by ids handed out in order and mostly settled in order:
//! a queue's unsettled deliveries (by delivery id) and an MQTT session's
//! unacknowledged PUBLISHes (by packet id).
//!
//! Every delivery to a consumer that acknowledges is one insert and, at
//! its ack, one remove. A hash map scatters consecutive ids over its
//! table: with a prefetch of a thousand, nearly every insert and remove
//! missed the cache (12% of broker CPU in the MQTT fan-out bench). Here
//! the ids in flight are a ring indexed by id less the oldest id's: a
//! delivery is a push at the back and an in-order ack a pop at the front.
//! Tables indexed by id modulo their size did the same until they had to
//! grow: every burst that outgrew one rehashed it and zeroed the new slots
//! at each doubling (2.3% of broker CPU in the same bench for a queue's,
//! 1.5% for a session's), where the ring grows by copying what it holds.
//! An entry kept for long (a consumer holding a delivery) would stretch
//! the ring over every id since; once the ring is mostly gaps it moves to
//! a small hash map beside it instead, so the ring is sized by how many
//! entries there are, never by how far apart.

use std::collections::VecDeque;
use std::hash::Hash;

use super::names::{DeliveryId, IdMap};

/// Slots the ring may stretch beyond `MAX_SPREAD` times its entries, so
/// that a few entries held long do not move at once.
const SLACK: usize = 64;
/// The ring may be this many times longer than the entries in it (plus
/// `SLACK`) before its oldest go to the spill map.
const MAX_SPREAD: usize = 4;

/// An id handed out in order.
pub trait RingId: Copy + Eq + Hash {
    /// How far past `base` it is, if it is (16-bit packet ids wrap: every
    /// id is past every other).
    fn offset_from(self, base: Self) -> Option<usize>;
    /// The id `n` past this one.
    fn advanced(self, n: usize) -> Self;
}

impl RingId for DeliveryId {
    fn offset_from(self, base: Self) -> Option<usize> {
        usize::try_from(self.0.checked_sub(base.0)?).ok()
    }
    fn advanced(self, n: usize) -> Self {
        DeliveryId(self.0 + n as u64)
    }
}

impl RingId for u16 {
    fn offset_from(self, base: Self) -> Option<usize> {
        Some(usize::from(self.wrapping_sub(base)))
    }
    fn advanced(self, n: usize) -> Self {
        // Truncation is the point: ids wrap.
        self.wrapping_add(n as u16)
    }
}

/// Drop-in for the `IdMap<K, V>` it replaces.
#[derive(Debug)]
pub struct IdRing<K: RingId, V> {
    /// `ring[i]` is id `base` advanced by `i`; never starts with a gap.
    ring: VecDeque<Option<V>>,
    base: Option<K>,
    in_ring: usize,
    /// Ids outside the ring: behind `base`, far ahead of it, or moved out.
    spill: IdMap<K, V>,
}

/// A queue's unsettled deliveries.
pub type DeliveryMap<V> = IdRing<DeliveryId, V>;

impl<K: RingId, V> Default for IdRing<K, V> {
    fn default() -> Self {
        Self {
            ring: VecDeque::new(),
            base: None,
            in_ring: 0,
            spill: IdMap::default(),
        }
    }
}

impl<K: RingId, V> IdRing<K, V> {
    pub fn len(&self) -> usize {
        self.in_ring + self.spill.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How far `id` is past the ring's start.
    fn offset(&self, id: K) -> Option<usize> {
        id.offset_from(self.base?)
    }

    /// `id`'s place in the ring, if the ring spans it.
    fn place(&self, id: K) -> Option<usize> {
        self.offset(id).filter(|&off| off < self.ring.len())
    }

    /// Adds or replaces `id`'s value; returns the value it replaced.
    pub fn insert(&mut self, id: K, value: V) -> Option<V> {
        // An id is in one place at most: a spilled one may come back into
        // the ring's span (the ring emptied and started again lower down).
        let old = if self.spill.is_empty() {
            None
        } else {
            self.spill.remove(&id)
        };
        if self.ring.is_empty() {
            self.base = Some(id);
        }
        if let Some(off) = self.place(id) {
            let slot = &mut self.ring[off];
            if slot.is_none() {
                self.in_ring += 1;
            }
            return slot.replace(value).or(old);
        }
        match self.offset(id).map(|off| off - self.ring.len()) {
            // Ahead of the ring, near enough to stretch it.
            Some(gap) if gap <= self.ring.len() + SLACK => {
                self.ring.extend(std::iter::repeat_with(|| None).take(gap));
                self.ring.push_back(Some(value));
                self.in_ring += 1;
                self.spill_oldest();
            }
            // Behind it (a requeued delivery coming back) or far ahead.
            _ => {
                self.spill.insert(id, value);
            }
        }
        old
    }

    /// Moves the oldest entries out of a ring that is mostly gaps.
    fn spill_oldest(&mut self) {
        while self.ring.len() > self.in_ring * MAX_SPREAD + SLACK {
            let Some(base) = self.base else { return };
            if let Some(Some(v)) = self.ring.pop_front() {
                self.in_ring -= 1;
                self.spill.insert(base, v);
            }
            self.base = Some(base.advanced(1));
            self.trim_front();
        }
    }

    /// Drops the gaps at the front. An emptied ring keeps its room: a
    /// fan-out subscriber's deliveries come in bursts, and shrinking it
    /// at the end of each made the next regrow it by doubling, copying
    /// what it held each time (3% of broker CPU in the MQTT fan-out QoS 1
    /// 16 B bench). `release_spare` lets the room go once it is idle.
    fn trim_front(&mut self) {
        let mut gaps = 0;
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            gaps += 1;
        }
        self.base = self.base.map(|b| b.advanced(gaps));
        if self.in_ring == 0 {
            self.ring.clear();
        }
    }

    /// Lets go of the room an empty ring kept from its last burst.
    pub fn release_spare(&mut self) {
        if self.in_ring == 0 && self.ring.capacity() > 0 {
            self.ring = VecDeque::new();
        }
    }

    /// Slots the ring has room for, in use or not.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Takes `id`'s value out.
    pub fn remove(&mut self, id: &K) -> Option<V> {
        if let Some(off) = self.place(*id)
            && let Some(v) = self.ring[off].take()
        {
            self.in_ring -= 1;
            if off == 0 || self.in_ring == 0 {
                self.trim_front();
            }
            return Some(v);
        }
        if self.spill.is_empty() {
            None
        } else {
            self.spill.remove(id)
        }
    }

    pub fn get(&self, id: &K) -> Option<&V> {
        match self.place(*id).and_then(|off| self.ring[off].as_ref()) {
            Some(v) => Some(v),
            // Asked of every new packet id (`contains`): most often empty.
            None if self.spill.is_empty() => None,
            None => self.spill.get(id),
        }
    }

    pub fn contains(&self, id: &K) -> bool {
        self.get(id).is_some()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (K, &V)> {
        let base = self.base;
        self.ring
            .iter()
            .enumerate()
            .filter_map(move |(i, v)| Some((base?.advanced(i), v.as_ref()?)))
            .chain(self.spill.iter().map(|(id, v)| (*id, v)))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    pub fn clear(&mut self) {
        self.ring = VecDeque::new();
        self.in_ring = 0;
        self.spill.clear();
    }
}

/// A small deterministic generator (xorshift) for the model tests of
/// id-indexed tables, here and in `mqtt::inflight`.
#[cfg(test)]
pub(crate) fn test_rng(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

#[cfg(test)]
mod tests {
    use super::{DeliveryMap, MAX_SPREAD, SLACK};
    use crate::core::names::DeliveryId;
    use std::collections::BTreeMap;

    #[test]
    fn it_behaves_as_a_map_with_settlements_in_and_out_of_order() {
        let mut m = DeliveryMap::default();
        let mut model = BTreeMap::new();
        let mut next = 1u64;
        let mut rand = super::test_rng(0x2545_f491_4f6c_dd1d);
        // Two deliveries kept unsettled for most of the run, so later ids
        // land on their slots again and again.
        for id in [next, next + 1] {
            m.insert(DeliveryId(id), id);
            model.insert(id, id);
        }
        next += 2;
        for round in 0..300_000u64 {
            match rand() % 10 {
                0..=5 => {
                    assert_eq!(m.insert(DeliveryId(next), next), None);
                    model.insert(next, next);
                    next += 1;
                    // Held ones leave the ring rather than stretch it.
                    assert!(m.ring.len() <= m.in_ring * MAX_SPREAD + SLACK);
                }
                6 if round % 1000 == 0 => {
                    // A requeue puts an id back that was taken out.
                    let id = next - 1 - rand() % 50;
                    let had = model.insert(id, round);
                    assert_eq!(m.insert(DeliveryId(id), round), had);
                }
                _ => {
                    let Some(&oldest) = model.keys().find(|&&k| k > 2 || round > 250_000) else {
                        continue;
                    };
                    let id = if rand().is_multiple_of(5) {
                        // Out of order: somewhere among the newer ones.
                        oldest + rand() % 64
                    } else {
                        oldest
                    };
                    if id <= 2 && round < 250_000 {
                        continue;
                    }
                    assert_eq!(m.get(&DeliveryId(id)), model.get(&id));
                    assert_eq!(m.remove(&DeliveryId(id)), model.remove(&id));
                    assert_eq!(m.remove(&DeliveryId(id)), None);
                }
            }
            assert_eq!(m.len(), model.len());
            if round % 10_000 == 0 {
                let mut got: Vec<(u64, u64)> = m.iter().map(|(k, v)| (k.0, *v)).collect();
                let want: Vec<(u64, u64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                got.sort_unstable();
                assert_eq!(got, want);
            }
        }
        for (id, v) in std::mem::take(&mut model) {
            assert_eq!(m.remove(&DeliveryId(id)), Some(v));
        }
        assert!(m.is_empty());
        assert_eq!(m.values().count(), 0);
    }

    #[test]
    fn an_emptied_ring_keeps_its_room_until_it_is_released() {
        let mut m = DeliveryMap::default();
        for id in 1..=1000 {
            m.insert(DeliveryId(id), id);
        }
        let grown = m.capacity();
        assert!(grown >= 1000);
        for id in 1..=1000 {
            assert_eq!(m.remove(&DeliveryId(id)), Some(id));
        }
        assert!(m.is_empty());
        assert_eq!(m.capacity(), grown, "kept for the next burst");
        for id in 1001..=2000 {
            m.insert(DeliveryId(id), id);
        }
        assert_eq!(m.capacity(), grown, "the next burst fits");
        m.release_spare();
        assert_eq!(m.capacity(), grown, "not while in use");
        for id in 1001..=2000 {
            m.remove(&DeliveryId(id));
        }
        m.release_spare();
        assert_eq!(m.capacity(), 0);
        m.insert(DeliveryId(5000), 1);
        assert_eq!(m.get(&DeliveryId(5000)), Some(&1));
    }
}
