//! A queue's unsettled deliveries, by delivery id.
//!
//! Every delivery to a consumer that acknowledges is one insert here and,
//! at its ack, one remove. A queue numbers its deliveries in order and
//! consumers settle them mostly in order, but a hash map scatters
//! consecutive ids over its table: with a prefetch of a thousand, nearly
//! every insert and remove missed the cache (12% of broker CPU in the MQTT
//! fan-out bench). Here an id's slot is the id modulo the table's size, so
//! the ids in flight are a window moving through the table. An id whose
//! slot is still held by an older delivery (one a consumer keeps for a
//! long while) goes to a small hash map beside it instead, so the table is
//! sized by how many deliveries are unsettled, never by how far apart.

use super::names::{DeliveryId, IdMap};

/// Fewest slots, once there is a table at all.
const MIN_SLOTS: usize = 16;
/// A table this large or smaller is kept when it empties; a larger one,
/// grown for a burst, shrinks back to it. Letting it go entirely made
/// every burst of a fan-out subscriber's deliveries regrow it from the
/// smallest size, rehashing at each step (half of `insert`'s samples).
const KEEP_SLOTS: usize = 64;

/// Drop-in for the `IdMap<DeliveryId, V>` it replaces.
#[derive(Debug)]
pub struct DeliveryMap<V> {
    /// A power of two in length, or empty.
    slots: Vec<Option<(DeliveryId, V)>>,
    in_slots: usize,
    spill: IdMap<DeliveryId, V>,
}

impl<V> Default for DeliveryMap<V> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            in_slots: 0,
            spill: IdMap::default(),
        }
    }
}

impl<V> DeliveryMap<V> {
    pub fn len(&self) -> usize {
        self.in_slots + self.spill.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, id: DeliveryId) -> usize {
        // Truncation is the point: the low bits pick the slot.
        (id.0 as usize) & (self.slots.len() - 1)
    }

    /// Adds or replaces `id`'s value; returns the value it replaced.
    pub fn insert(&mut self, id: DeliveryId, value: V) -> Option<V> {
        if (self.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let old = if self.spill.is_empty() {
            None
        } else {
            self.spill.remove(&id)
        };
        let i = self.slot(id);
        match &mut self.slots[i] {
            Some((held, v)) if *held == id => Some(std::mem::replace(v, value)),
            Some(_) => {
                self.spill.insert(id, value);
                old
            }
            empty @ None => {
                *empty = Some((id, value));
                self.in_slots += 1;
                old
            }
        }
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::take(&mut self.slots);
        self.slots.resize_with(size, || None);
        self.in_slots = 0;
        let spilled = std::mem::take(&mut self.spill);
        for (id, value) in old.into_iter().flatten().chain(spilled) {
            let i = self.slot(id);
            match &mut self.slots[i] {
                empty @ None => {
                    *empty = Some((id, value));
                    self.in_slots += 1;
                }
                Some(_) => {
                    self.spill.insert(id, value);
                }
            }
        }
    }

    /// Takes `id`'s value out.
    pub fn remove(&mut self, id: &DeliveryId) -> Option<V> {
        if self.slots.is_empty() {
            return None;
        }
        let i = self.slot(*id);
        let value = match &self.slots[i] {
            Some((held, _)) if held == id => {
                self.in_slots -= 1;
                self.slots[i].take().map(|(_, v)| v)
            }
            _ => self.spill.remove(id),
        };
        if value.is_some() && self.is_empty() && self.slots.len() > KEEP_SLOTS {
            // Every slot is empty: the first KEEP_SLOTS (a power of two)
            // are a valid table.
            self.slots.truncate(KEEP_SLOTS);
            self.slots.shrink_to_fit();
        }
        value
    }

    pub fn get(&self, id: &DeliveryId) -> Option<&V> {
        if self.slots.is_empty() {
            return None;
        }
        match &self.slots[self.slot(*id)] {
            Some((held, v)) if held == id => Some(v),
            _ => self.spill.get(id),
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&DeliveryId, &V)> {
        self.slots
            .iter()
            .flatten()
            .map(|(id, v)| (id, v))
            .chain(self.spill.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    pub fn clear(&mut self) {
        self.slots = Vec::new();
        self.in_slots = 0;
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
    use super::DeliveryMap;
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
