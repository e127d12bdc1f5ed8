//! A queue's unsettled deliveries, by delivery id.
//!
//! Every delivery to a consumer that acknowledges is one insert here and,
//! at its ack, one remove. A queue numbers its deliveries in order and
//! consumers settle them mostly in order, but a hash map scatters
//! consecutive ids over its table: with a prefetch of a thousand, nearly
//! every insert and remove missed the cache (12% of broker CPU in the MQTT
//! fan-out bench). Here the ids in flight are a ring indexed by id less
//! the oldest id's: a delivery is a push at the back and an in-order ack a
//! pop at the front. A table indexed by id modulo its size did the same
//! until it had to grow: every burst that outgrew it rehashed it and
//! zeroed the new slots at each doubling (2.3% of broker CPU in the same
//! bench), where the ring grows by copying what it holds. A delivery kept
//! for long (a consumer holding it) would stretch the ring over every id
//! since; once the ring is mostly gaps it moves to a small hash map
//! beside it instead, so the ring is sized by how many deliveries are
//! unsettled, never by how far apart.

use std::collections::VecDeque;

use super::names::{DeliveryId, IdMap};

/// A ring this large or smaller is kept when it empties; a larger one,
/// grown for a burst, shrinks back to it. Letting it go entirely made
/// every burst of a fan-out subscriber's deliveries regrow it from the
/// smallest size.
const KEEP_SLOTS: usize = 64;
/// The ring may be this many times longer than the deliveries in it
/// (plus `KEEP_SLOTS`) before its oldest go to the spill map.
const MAX_SPREAD: usize = 4;

/// Drop-in for the `IdMap<DeliveryId, V>` it replaces.
#[derive(Debug)]
pub struct DeliveryMap<V> {
    /// `ring[i]` is id `base + i`; never starts with a gap.
    ring: VecDeque<Option<V>>,
    base: u64,
    in_ring: usize,
    /// Ids outside the ring: older than `base`, or moved out of it.
    spill: IdMap<DeliveryId, V>,
}

impl<V> Default for DeliveryMap<V> {
    fn default() -> Self {
        Self {
            ring: VecDeque::new(),
            base: 0,
            in_ring: 0,
            spill: IdMap::default(),
        }
    }
}

impl<V> DeliveryMap<V> {
    pub fn len(&self) -> usize {
        self.in_ring + self.spill.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `id`'s place in the ring, if the ring spans it.
    fn offset(&self, id: DeliveryId) -> Option<usize> {
        let off = usize::try_from(id.0.checked_sub(self.base)?).ok()?;
        (off < self.ring.len()).then_some(off)
    }

    /// Adds or replaces `id`'s value; returns the value it replaced.
    pub fn insert(&mut self, id: DeliveryId, value: V) -> Option<V> {
        // An id is in one place at most: a spilled one may come back into
        // the ring's span (the ring emptied and started again lower down).
        let old = if self.spill.is_empty() {
            None
        } else {
            self.spill.remove(&id)
        };
        if self.ring.is_empty() {
            self.base = id.0;
        }
        if let Some(off) = self.offset(id) {
            let slot = &mut self.ring[off];
            if slot.is_none() {
                self.in_ring += 1;
            }
            return slot.replace(value).or(old);
        }
        let gap =
            id.0.checked_sub(self.base)
                .and_then(|off| usize::try_from(off).ok())
                .map(|off| off - self.ring.len());
        match gap {
            // Ahead of the ring, near enough to stretch it.
            Some(gap) if gap <= self.ring.len() + KEEP_SLOTS => {
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

    /// Moves the oldest deliveries out of a ring that is mostly gaps.
    fn spill_oldest(&mut self) {
        while self.ring.len() > self.in_ring * MAX_SPREAD + KEEP_SLOTS {
            if let Some(Some(v)) = self.ring.pop_front() {
                self.in_ring -= 1;
                self.spill.insert(DeliveryId(self.base), v);
            }
            self.base += 1;
            self.trim_front();
        }
    }

    /// Drops the gaps at the front; lets a large ring go once it is empty.
    fn trim_front(&mut self) {
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            self.base += 1;
        }
        if self.in_ring == 0 {
            self.ring.clear();
            if self.ring.capacity() > KEEP_SLOTS {
                self.ring.shrink_to(KEEP_SLOTS);
            }
        }
    }

    /// Takes `id`'s value out.
    pub fn remove(&mut self, id: &DeliveryId) -> Option<V> {
        if let Some(off) = self.offset(*id)
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

    pub fn get(&self, id: &DeliveryId) -> Option<&V> {
        match self.offset(*id).and_then(|off| self.ring[off].as_ref()) {
            Some(v) => Some(v),
            None => self.spill.get(id),
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (DeliveryId, &V)> {
        let base = self.base;
        self.ring
            .iter()
            .zip(base..)
            .filter_map(|(v, id)| Some((DeliveryId(id), v.as_ref()?)))
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
    use super::{DeliveryMap, KEEP_SLOTS, MAX_SPREAD};
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
                    assert!(m.ring.len() <= m.in_ring * MAX_SPREAD + KEEP_SLOTS);
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
}
