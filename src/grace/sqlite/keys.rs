//! Which idempotency keys the journal may already hold, so that a new key costs the committer
//! no database read.
//!
//! Every append used to look its key up in the pending map and then in SQLite before the
//! committer could decide on it: a few microseconds per item on the one thread every append
//! waits for, and a millisecond or more when that read met the checkpointer. Nearly every key
//! is new. [`KeyFilter`] answers "certainly new" from memory; only a key it may hold (a real
//! duplicate, or a false positive: under 1 in 1 000) is looked up as before.
//!
//! A false *negative* would charge a patient twice, so the filter is never told to forget:
//! items are never deleted from the journal, the filter starts with every key the database
//! holds (after the log's replay) and the committer, the only thread that accepts items, adds
//! each key as it accepts it. It is a scalable Bloom filter (Almeida et al., 2007): when a
//! layer has taken its share of keys a layer twice its size starts beside it, each with one
//! hash more than the last, so the false-positive rate stays under twice the first layer's
//! (about 0.05%) however many keys arrive. Memory: 16 bits per key of capacity, rounded up to a
//! power of two: 128 KiB for an empty journal, 3 bytes a key at 300 000 keys, 4 MiB for a
//! journal opened with a million items (room for a million more before the next layer).
//! The filter is fed each key's stored hash (`schema::key_hash`, the `idem_hash` column), so
//! the journal's start reads only the small `items_idem` index to fill it. Positions come from
//! one keyed SipHash (random per process) of that hash, so callers cannot choose keys that all
//! look taken.

use std::hash::{BuildHasher, RandomState};

/// The first layer's capacity when the journal is empty or small.
const MIN_CAPACITY: u64 = 1 << 16;
/// Hashes (bits set per key) in the first layer: with 16 bits per key, about 0.05% false
/// positives at capacity.
const FIRST_HASHES: u32 = 11;
const BITS_PER_KEY: u64 = 16;

pub struct KeyFilter {
    layers: Vec<Layer>,
    hasher: RandomState,
}

struct Layer {
    words: Vec<u64>,
    /// Bit positions are taken modulo the layer's size, a power of two.
    mask: u64,
    hashes: u32,
    capacity: u64,
    len: u64,
}

impl Layer {
    fn new(capacity: u64, hashes: u32) -> Layer {
        let bits = (capacity.saturating_mul(BITS_PER_KEY)).next_power_of_two().max(64);
        Layer { words: vec![0; (bits / 64) as usize], mask: bits - 1, hashes, capacity, len: 0 }
    }

    /// The bit positions of a key: `a + i·b` for i in 0..hashes (Kirsch and Mitzenmacher), with
    /// `b` odd so that the positions differ.
    fn positions(h: u64, hashes: u32, mask: u64) -> impl Iterator<Item = (usize, u64)> {
        let (a, b) = (h, h.rotate_left(32) | 1);
        (0..u64::from(hashes)).map(move |i| {
            let p = a.wrapping_add(i.wrapping_mul(b)) & mask;
            ((p / 64) as usize, 1 << (p % 64))
        })
    }

    fn contains(&self, h: u64) -> bool {
        Layer::positions(h, self.hashes, self.mask).all(|(w, bit)| self.words[w] & bit != 0)
    }

    fn insert(&mut self, h: u64) {
        for (w, bit) in Layer::positions(h, self.hashes, self.mask) {
            self.words[w] |= bit;
        }
        self.len += 1;
    }
}

impl KeyFilter {
    /// An empty filter sized for `expected` keys (more fit; they start new layers).
    pub fn with_capacity(expected: u64) -> KeyFilter {
        let first = Layer::new(expected.saturating_mul(2).max(MIN_CAPACITY), FIRST_HASHES);
        KeyFilter { layers: vec![first], hasher: RandomState::new() }
    }

    fn hash(&self, key_hash: i64) -> u64 {
        self.hasher.hash_one(key_hash)
    }

    /// False only if no key with this `key_hash` was ever inserted.
    pub fn may_contain(&self, key_hash: i64) -> bool {
        let h = self.hash(key_hash);
        self.layers.iter().any(|l| l.contains(h))
    }

    pub fn insert(&mut self, key_hash: i64) {
        let h = self.hash(key_hash);
        let full = self.layers.last().is_none_or(|l| l.len >= l.capacity);
        if full {
            let (capacity, hashes) = self
                .layers
                .last()
                .map_or((MIN_CAPACITY, FIRST_HASHES), |l| (l.capacity.saturating_mul(2), l.hashes + 1));
            self.layers.push(Layer::new(capacity, hashes));
        }
        if let Some(layer) = self.layers.last_mut() {
            layer.insert(h);
        }
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.words.len() * 8).sum()
    }

    /// Keys inserted.
    pub fn len(&self) -> u64 {
        self.layers.iter().map(|l| l.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grace::sqlite::schema::key_hash;

    #[test]
    fn every_key_inserted_is_found_across_new_layers_and_few_others_are() {
        let mut f = KeyFilter::with_capacity(0);
        let n = 300_000u64; // past the first layer (65 536) and the second (131 072)
        for i in 0..n {
            f.insert(key_hash(&format!("key-{i}")));
        }
        assert!(f.layers.len() >= 3, "{} layers", f.layers.len());
        assert_eq!(f.len(), n);
        let missed = (0..n).filter(|i| !f.may_contain(key_hash(&format!("key-{i}")))).count();
        assert_eq!(missed, 0, "a key inserted must never read as new");
        let false_positives = (0..200_000u64).filter(|i| f.may_contain(key_hash(&format!("other-{i}")))).count();
        // Under 0.2% (twice the first layer's rate, with room for chance): 400 of 200 000.
        assert!(false_positives < 400, "{false_positives} false positives in 200 000");
        assert!(f.bytes() < (n as usize) * 4, "{} bytes for {n} keys", f.bytes());
    }

    #[test]
    fn a_filter_sized_for_a_journal_keeps_its_keys_in_one_layer() {
        let mut f = KeyFilter::with_capacity(100_000);
        for i in 0..100_000u64 {
            f.insert(key_hash(&format!("{i:032x}")));
        }
        assert_eq!(f.layers.len(), 1);
        assert!(f.may_contain(key_hash(&format!("{:032x}", 99_999))));
        assert!(!KeyFilter::with_capacity(0).may_contain(key_hash("anything")), "an empty filter holds nothing");
    }
}
