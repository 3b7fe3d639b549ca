//! The seeded randomness of the fault scenarios and the soak: one seed,
//! printed at the start, decides every random choice (which fault, when,
//! for how long), so a run can be repeated with `SCAN_FAULT_SEED`. It does
//! not decide what the processes do with the time they are given.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable that fixes the seed of a run. Not `SCANGW_…`:
/// the gateway refuses environment variables of its own prefix that are
/// not its settings, and the servers inherit the test's environment.
pub const SEED_ENV: &str = "SCAN_FAULT_SEED";

/// The seed from `SCAN_FAULT_SEED`, else one from the clock. A value that
/// is set but not a number fails loudly rather than picking another seed.
pub fn seed_from_env() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_ENV}={text:?} is not an unsigned number")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// SplitMix64: small, fast and the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "empty range {low}..={high}");
        low + self.next_u64() % (high - low + 1)
    }

    /// A duration between `low` and `high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.range(low, high))
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64 - 1) as usize]
    }

    /// True with probability `percent` in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 99) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_choices() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let xs: Vec<u64> = (0..10).map(|_| a.range(0, 1000)).collect();
        let ys: Vec<u64> = (0..10).map(|_| b.range(0, 1000)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| *x <= 1000));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
