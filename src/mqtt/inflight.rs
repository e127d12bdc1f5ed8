//! The PUBLISHes sent to a client and not yet acknowledged, by packet id.
//!
//! Every QoS 1 or 2 copy sent is one insert and, at its PUBACK, one
//! remove. The session hands out ids in order and clients acknowledge
//! them mostly in order: the ids in flight are a window moving through
//! the 16-bit id space, kept as the core keeps a queue's unsettled
//! deliveries (core/id_ring.rs), with ids that wrap from 65535 to 1.

/// Packet id to what the session needs at the acknowledgement.
pub type InFlight<T> = crate::core::id_ring::IdRing<u16, T>;

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
        let mut rand = crate::core::id_ring::test_rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..200_000u32 {
            if !rand().is_multiple_of(3) || model.is_empty() {
                while next == 0 || t.contains(&next) {
                    next = next.wrapping_add(1);
                }
                assert_eq!(t.insert(next, round), None);
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
                assert_eq!(t.remove(&id), model.remove(&id));
                assert_eq!(t.remove(&id), None);
            }
            assert_eq!(t.len(), model.len());
            if model.len() > 5000 {
                for (id, v) in model.drain() {
                    assert_eq!(t.remove(&id), Some(v));
                }
            }
        }
        for (id, v) in model.drain() {
            assert!(t.contains(&id));
            assert_eq!(t.remove(&id), Some(v));
        }
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn ids_wrap_from_65535_to_1_and_an_id_kept_long_does_not_stretch_the_window() {
        let mut t = InFlight::default();
        // Held while ids go round the whole space twice.
        t.insert(65_000, "held");
        let mut id: u16 = 65_001;
        for _ in 0..140_000 {
            if id == 65_000 {
                id = 65_001;
            }
            assert_eq!(t.insert(id, "x"), None);
            assert_eq!(t.remove(&id), Some("x"));
            id = id.checked_add(1).unwrap_or(1);
        }
        assert_eq!(t.len(), 1);
        assert!(t.contains(&65_000));
        // Across the wrap, in flight together.
        for id in (65_530..=65_535).chain(1..=5) {
            t.insert(id, "w");
        }
        assert_eq!(t.len(), 12);
        for id in (65_530..=65_535).chain(1..=5) {
            assert_eq!(t.remove(&id), Some("w"));
        }
        assert_eq!(t.remove(&65_000), Some("held"));
        assert!(t.is_empty());
    }
}
