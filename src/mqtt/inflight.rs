//! The PUBLISHes sent to a client and not yet acknowledged, by packet id.
//!
//! Every QoS 1 or 2 copy sent is one insert and, at its PUBACK, one
//! remove. A hash map spreads consecutive ids over its whole table, so
//! with a thousand in flight nearly every insert and remove is a cache
//! miss. Here an id's slot is the id itself modulo the table's size: the
//! session hands out ids in order and clients acknowledge them mostly in
//! order, so the slots in use are a window that moves through the table.
//! The session picks only ids whose slot is free (`is_free`), which packet
//! ids allow: any unused id will do.

/// Fewest slots, once there is a table at all.
const MIN_SLOTS: usize = 16;
/// A table this large or smaller is kept when it empties.
const KEEP_SLOTS: usize = MIN_SLOTS * 64;
/// Packet ids are 16 bits: this many slots separate every id.
const MAX_SLOTS: usize = 1 << 16;

#[derive(Debug)]
pub struct InFlight<T> {
    /// A power of two in length, or empty; a slot holds its id with the value.
    slots: Vec<Option<(u16, T)>>,
    len: usize,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<T> InFlight<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slot(&self, id: u16) -> usize {
        usize::from(id) & (self.slots.len() - 1)
    }

    /// Makes room for one more, keeping at most half the slots in use so
    /// that a free slot is never far from the next id.
    pub fn reserve_one(&mut self) {
        if (self.len + 1) * 2 > self.slots.len() && self.slots.len() < MAX_SLOTS {
            self.resize((self.slots.len() * 2).max(MIN_SLOTS));
        }
    }

    fn resize(&mut self, size: usize) {
        let old = std::mem::take(&mut self.slots);
        self.slots.resize_with(size, || None);
        // Two ids apart in a larger table were apart in the smaller one.
        for (id, value) in old.into_iter().flatten() {
            let i = self.slot(id);
            self.slots[i] = Some((id, value));
        }
    }

    /// Whether `id` may be inserted: its slot holds nothing.
    pub fn is_free(&self, id: u16) -> bool {
        self.slots.is_empty() || self.slots[self.slot(id)].is_none()
    }

    /// Whether `id` is in flight.
    pub fn contains(&self, id: u16) -> bool {
        !self.slots.is_empty() && matches!(self.slots[self.slot(id)], Some((i, _)) if i == id)
    }

    /// Records `id`, whose slot must be free (`is_free` after `reserve_one`).
    pub fn insert(&mut self, id: u16, value: T) {
        if self.slots.is_empty() {
            self.resize(MIN_SLOTS);
        }
        // Only a caller that skipped `is_free` finds its slot taken; the
        // table grows until the two ids part (at the latest at 2^16 slots).
        while !self.is_free(id) {
            if self.contains(id) {
                // The id is reused: the value it held is replaced.
                self.len -= 1;
                break;
            }
            self.resize(self.slots.len() * 2);
        }
        let i = self.slot(id);
        self.slots[i] = Some((id, value));
        self.len += 1;
    }

    /// Takes `id`'s value out, if it is in flight.
    pub fn remove(&mut self, id: u16) -> Option<T> {
        if !self.contains(id) {
            return None;
        }
        let i = self.slot(id);
        let (_, value) = self.slots[i].take()?;
        self.len -= 1;
        if self.len == 0 && self.slots.len() > KEEP_SLOTS {
            // A burst is over: its table shrinks back (every slot is
            // empty, so the first KEEP_SLOTS are a valid table). Letting
            // it go made the next burst regrow it from the smallest size.
            self.slots.truncate(KEEP_SLOTS);
            self.slots.shrink_to_fit();
        }
        Some(value)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.slots = Vec::new();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::InFlight;
    use std::collections::HashMap;

    #[test]
    fn ids_in_flight_behave_as_in_a_map_whatever_the_order_of_acks() {
        let mut t = InFlight::default();
        let mut model = HashMap::new();
        let mut next: u16 = 1;
        // A small deterministic generator: bursts, acks in and out of order,
        // one id left unacknowledged for a long time.
        let mut rand = crate::core::delivery_map::test_rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..200_000u32 {
            if !rand().is_multiple_of(3) || model.is_empty() {
                t.reserve_one();
                while next == 0 || !t.is_free(next) {
                    next = next.wrapping_add(1);
                }
                assert!(!t.contains(next));
                t.insert(next, round);
                model.insert(next, round);
                next = next.wrapping_add(1);
            } else {
                let keys: Vec<u16> = model.keys().copied().collect();
                let id = if rand().is_multiple_of(4) {
                    keys[rand() as usize % keys.len()]
                } else {
                    *keys.iter().min().expect("not empty")
                };
                if id == 1 && round < 150_000 {
                    continue;
                }
                assert_eq!(t.remove(id), model.remove(&id));
                assert_eq!(t.remove(id), None);
            }
            assert_eq!(t.len(), model.len());
            if model.len() > 5000 {
                for (id, v) in model.drain() {
                    assert_eq!(t.remove(id), Some(v));
                }
            }
        }
        for (id, v) in model.drain() {
            assert!(t.contains(id));
            assert_eq!(t.remove(id), Some(v));
        }
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn an_id_whose_slot_is_taken_still_goes_in() {
        let mut t = InFlight::default();
        t.insert(1, 'a');
        t.insert(17, 'b');
        t.insert(1 + 1024, 'c');
        assert_eq!(t.remove(17), Some('b'));
        assert_eq!(t.remove(1), Some('a'));
        assert_eq!(t.remove(1025), Some('c'));
        assert_eq!(t.len(), 0);
    }
}
