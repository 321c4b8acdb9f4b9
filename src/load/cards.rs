//! The card pool of the settlement mix: valid 18-character social-security numbers, drawn with a skew.
//!
//! Real settlement peaks are not uniform over cardholders: a few patients (chronic care, dialysis)
//! settle many times while most settle once. A Zipf-like draw (weight of the k-th card ∝ 1/k^s)
//! reproduces that, which matters to Lifeline because per-card grace limits and per-key
//! idempotency both see hot cards. `s = 0` is uniform.
//!
//! Numbers follow GB 11643: 6-digit region, 8-digit birth date, 3-digit sequence and an
//! ISO 7064 MOD 11-2 check character, so a backend that validates them accepts them.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const REGIONS: [&str; 8] = ["110101", "310104", "440106", "510107", "330106", "420111", "320102", "610113"];

/// A fixed pool of card numbers with a cumulative draw distribution.
#[derive(Debug, Clone)]
pub struct CardPool {
    cards: Vec<String>,
    cdf: Vec<f64>,
}

impl CardPool {
    /// `size` cards generated from `seed`; the k-th (0-based) has weight 1/(k+1)^skew.
    pub fn new(size: usize, skew: f64, seed: u64) -> Result<CardPool, String> {
        if size == 0 {
            return Err("the card pool needs at least one card".into());
        }
        if !(skew.is_finite() && (0.0..=5.0).contains(&skew)) {
            return Err(format!("card skew {skew} must be between 0 (uniform) and 5"));
        }
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x6361_7264);
        let cards = (0..size).map(|_| random_id(&mut rng)).collect();
        let mut acc = 0.0;
        let cdf = (0..size)
            .map(|k| {
                acc += 1.0 / ((k + 1) as f64).powf(skew);
                acc
            })
            .collect();
        Ok(CardPool { cards, cdf })
    }

    /// Draws a card index.
    pub fn draw(&self, rng: &mut impl Rng) -> u32 {
        let total = self.cdf.last().copied().unwrap_or(0.0);
        let u = rng.random::<f64>() * total;
        self.cdf.partition_point(|&c| c <= u).min(self.cards.len() - 1) as u32
    }

    pub fn card(&self, index: u32) -> &str {
        self.cards.get(index as usize).map(String::as_str).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        self.cards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cards.is_empty()
    }
}

fn random_id(rng: &mut impl Rng) -> String {
    let region = REGIONS[rng.random_range(0..REGIONS.len())];
    let year = rng.random_range(1940..2010);
    let month = rng.random_range(1..=12);
    let day = rng.random_range(1..=28);
    let seq = rng.random_range(0..1000);
    let body = format!("{region}{year:04}{month:02}{day:02}{seq:03}");
    let check = check_char(&body);
    format!("{body}{check}")
}

/// The GB 11643 check character of the first 17 digits.
pub fn check_char(first17: &str) -> char {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const MAP: &[u8; 11] = b"10X98765432";
    let sum: u32 = first17.bytes().zip(W).map(|(b, w)| u32::from(b.wrapping_sub(b'0')) * w).sum();
    MAP[(sum % 11) as usize] as char
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_valid_ids() {
        // A published example number.
        assert_eq!(check_char("11010519491231002"), 'X');
        let pool = CardPool::new(100, 1.0, 7).unwrap();
        for i in 0..100 {
            let c = pool.card(i);
            assert_eq!(c.len(), 18);
            assert!(c[..17].bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(c.chars().last().unwrap(), check_char(&c[..17]));
        }
        assert_eq!(CardPool::new(100, 1.0, 7).unwrap().card(5), pool.card(5), "deterministic by seed");
    }

    #[test]
    fn skew_favours_the_first_cards_and_zero_is_uniform() {
        let mut rng = SmallRng::seed_from_u64(1);
        let skewed = CardPool::new(1000, 1.2, 1).unwrap();
        let mut hits = vec![0u32; 1000];
        for _ in 0..20_000 {
            hits[skewed.draw(&mut rng) as usize] += 1;
        }
        assert!(hits[0] > 20 * hits[500].max(1), "hot card {} vs median card {}", hits[0], hits[500]);
        let flat = CardPool::new(10, 0.0, 1).unwrap();
        let mut hits = [0u32; 10];
        for _ in 0..10_000 {
            hits[flat.draw(&mut rng) as usize] += 1;
        }
        assert!(hits.iter().all(|&h| (800..1200).contains(&h)), "{hits:?}");
        assert!(CardPool::new(0, 1.0, 1).is_err());
        assert!(CardPool::new(1, f64::NAN, 1).is_err());
    }
}
