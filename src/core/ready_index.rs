//! A queue's ready messages in delivery order: by priority rank (0 first),
//! then by arrival sequence, so a requeued message returns to exactly
//! where it was.
//!
//! A queue is appended to at the back and taken from the front nearly
//! always; a B-tree paid for a general ordered map on every message (node
//! splits, merges and their copies were 3 % of a backlogged fan-out's
//! profile). Here each rank is a `VecDeque` sorted by sequence: arrivals
//! are pushed at the back, and the rare insert in the middle (a requeue,
//! usually near the front) shifts the shorter side.

use std::collections::VecDeque;

/// Where a message sits: (priority rank, arrival sequence).
pub type ReadyKey = (u8, u64);

/// A rank's buffer larger than this is let go once it is drained, so a
/// queue that once held a backlog does not keep its memory.
const KEEP_CAPACITY: usize = 1024;

/// Ready messages ordered by `ReadyKey`.
#[derive(Debug)]
pub struct ReadyIndex<V> {
    /// Non-priority queues have one rank; priority queues one per rank
    /// seen, sorted by rank.
    ranks: Vec<(u8, VecDeque<(u64, V)>)>,
    len: usize,
}

impl<V> Default for ReadyIndex<V> {
    fn default() -> Self {
        Self {
            ranks: Vec::new(),
            len: 0,
        }
    }
}

impl<V> ReadyIndex<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn rank_mut(&mut self, rank: u8) -> &mut VecDeque<(u64, V)> {
        let at = match self.ranks.binary_search_by_key(&rank, |(r, _)| *r) {
            Ok(at) => at,
            Err(at) => {
                self.ranks.insert(at, (rank, VecDeque::new()));
                at
            }
        };
        &mut self.ranks[at].1
    }

    /// Adds a message under `key`, which must not be present.
    pub fn insert(&mut self, key: ReadyKey, value: V) {
        let (rank, seq) = key;
        let q = self.rank_mut(rank);
        match q.back() {
            Some((last, _)) if *last > seq => {
                let at = q.partition_point(|(s, _)| *s < seq);
                debug_assert!(
                    q.get(at).is_none_or(|(s, _)| *s != seq),
                    "key inserted twice"
                );
                q.insert(at, (seq, value));
            }
            _ => q.push_back((seq, value)),
        }
        self.len += 1;
    }

    /// The first message, without taking it.
    pub fn first(&self) -> Option<(ReadyKey, &V)> {
        self.ranks
            .iter()
            .find_map(|(r, q)| q.front().map(|(s, v)| ((*r, *s), v)))
    }

    /// Takes the first message.
    pub fn pop_first(&mut self) -> Option<(ReadyKey, V)> {
        let (rank, q) = self.ranks.iter_mut().find(|(_, q)| !q.is_empty())?;
        let (seq, value) = q.pop_front()?;
        if q.is_empty() && q.capacity() > KEEP_CAPACITY {
            *q = VecDeque::new();
        }
        self.len -= 1;
        Some(((*rank, seq), value))
    }

    /// The message under `key`, if it is still ready.
    pub fn get_mut(&mut self, key: &ReadyKey) -> Option<&mut V> {
        let (rank, seq) = *key;
        let at = self.ranks.binary_search_by_key(&rank, |(r, _)| *r).ok()?;
        let q = &mut self.ranks[at].1;
        let i = q.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        q.get_mut(i).map(|(_, v)| v)
    }

    /// Every message, in order.
    pub fn iter(&self) -> impl Iterator<Item = (ReadyKey, &V)> {
        self.ranks
            .iter()
            .flat_map(|(r, q)| q.iter().map(move |(s, v)| ((*r, *s), v)))
    }

    /// Every message, in order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Removes every message.
    pub fn clear(&mut self) {
        self.ranks.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn arrivals_come_out_in_order_and_a_requeue_returns_to_its_place() {
        let mut r = ReadyIndex::default();
        for seq in [1, 2, 3, 5, 6] {
            r.insert((0, seq), seq);
        }
        // Message 4 was handed out and comes back.
        r.insert((0, 4), 4);
        let order: Vec<u64> = std::iter::from_fn(|| r.pop_first().map(|(k, _)| k.1)).collect();
        assert_eq!(order, [1, 2, 3, 4, 5, 6]);
        assert!(r.is_empty());
    }

    #[test]
    fn a_lower_rank_goes_first_whatever_its_arrival() {
        let mut r = ReadyIndex::default();
        r.insert((5, 1), "low");
        r.insert((0, 2), "high");
        r.insert((5, 3), "low again");
        assert_eq!(r.first(), Some(((0, 2), &"high")));
        assert_eq!(r.get_mut(&(5, 3)).map(|v| *v), Some("low again"));
        assert_eq!(r.get_mut(&(5, 2)), None);
        let keys: Vec<ReadyKey> = r.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [(0, 2), (5, 1), (5, 3)]);
    }

    #[test]
    fn a_drained_backlog_gives_its_memory_back() {
        let mut r = ReadyIndex::default();
        for seq in 0..10_000 {
            r.insert((0, seq), ());
        }
        while r.pop_first().is_some() {}
        assert!(r.ranks.iter().all(|(_, q)| q.capacity() <= KEEP_CAPACITY));
    }

    proptest! {
        // The index agrees with an ordered map under any mix of inserts
        // (fresh and requeued keys, any rank), peeks, lookups and pops.
        #[test]
        fn behaves_as_an_ordered_map(ops in proptest::collection::vec((0u8..4, 0u8..3, 0u64..200), 1..400)) {
            let mut r = ReadyIndex::default();
            let mut m = BTreeMap::new();
            for (op, rank, seq) in ops {
                match op {
                    0 | 1 => {
                        if let std::collections::btree_map::Entry::Vacant(e) = m.entry((rank, seq)) {
                            e.insert(seq);
                            r.insert((rank, seq), seq);
                        }
                    }
                    2 => prop_assert_eq!(r.pop_first(), m.pop_first()),
                    _ => prop_assert_eq!(r.get_mut(&(rank, seq)).map(|v| *v), m.get(&(rank, seq)).copied()),
                }
                prop_assert_eq!(r.len(), m.len());
                prop_assert_eq!(r.first(), m.first_key_value().map(|(k, v)| (*k, v)));
            }
            let all: Vec<_> = r.iter().map(|(k, v)| (k, *v)).collect();
            let expected: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(all, expected);
        }
    }
}
