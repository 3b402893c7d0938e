//! Reproducible randomness for resumable training.
//!
//! - Host-side randomness (data order, augmentation) comes from [`DataRng`], a `ChaCha8Rng`
//!   (portable across platforms and rand versions, unlike `StdRng`) whose position in the stream
//!   is serialized in [`RngState`] (seed, stream, word position), so a resumed run draws exactly
//!   the numbers the uninterrupted run would have drawn.
//! - libtorch's global generator cannot be read or restored through tch, so instead of saving it
//!   we re-seed it deterministically from `(seed, step)` with [`seed_torch_for_step`] at every step.
//! - Shuffles use our own Fisher–Yates with Lemire's unbiased bounded draw on `next_u64`, so the
//!   order does not depend on `rand`'s `SliceRandom` implementation details.

use anyhow::{bail, Result};
use rand::rngs::ChaCha8Rng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Seeds libtorch's global CPU generator and, when CUDA is present, every CUDA generator.
pub fn seed_torch(seed: u64) {
    // manual_seed takes i64; the bit pattern is what matters.
    tch::manual_seed(seed as i64);
    if tch::Cuda::is_available() {
        tch::Cuda::manual_seed_all(seed);
    }
}

/// Seeds torch with a value derived from `(seed, step)`: calling this at the start of every step
/// makes dropout/sampling at step `k` identical whether or not the run was resumed before `k`.
pub fn seed_torch_for_step(seed: u64, step: u64) {
    seed_torch(mix64(
        seed ^ mix64(step.wrapping_add(0x9E37_79B9_7F4A_7C15)),
    ));
}

/// SplitMix64 finalizer: a fixed, portable bijective mix of 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Serializable position of a [`DataRng`]: the generator is `ChaCha8Rng::seed_from_u64(seed)`
/// with `set_stream(stream)` and `set_word_pos(word_pos)` (32-bit words consumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
    pub stream: u64,
    pub word_pos: u64,
}

/// A portable, resumable host RNG for data order and augmentation.
#[derive(Debug)]
pub struct DataRng {
    seed: u64,
    rng: ChaCha8Rng,
}

impl DataRng {
    /// Stream 0 of `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_stream(seed, 0)
    }

    /// An independent stream of the same seed (e.g. one per epoch or per data-parallel rank).
    pub fn with_stream(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Self { seed, rng }
    }

    /// The current position, to store in `trainer_state.json`.
    pub fn state(&self) -> RngState {
        // ChaCha's counter is 68 bits; 2^64 words would take centuries to consume.
        let word_pos = u64::try_from(self.rng.get_word_pos()).unwrap_or(u64::MAX);
        RngState {
            seed: self.seed,
            stream: self.rng.get_stream(),
            word_pos,
        }
    }

    /// Rebuilds the generator at a saved position.
    pub fn from_state(s: &RngState) -> Result<Self> {
        if s.word_pos == u64::MAX {
            bail!(
                "RNG state word position overflowed (seed {}, stream {})",
                s.seed,
                s.stream
            );
        }
        let mut r = Self::with_stream(s.seed, s.stream);
        // set_stream resets the position, so it must come first.
        r.rng.set_word_pos(u128::from(s.word_pos));
        Ok(r)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Uniform integer in `0..n` (Lemire's multiply-shift with rejection; unbiased). `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "DataRng::below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.rng.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform `f64` in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// In-place Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }

    /// A random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }

    /// Access to the raw generator for other `rand` APIs (their values are not guaranteed stable
    /// across rand versions; prefer the methods above for anything that must resume exactly).
    pub fn rng_mut(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

/// The data order of epoch `epoch`: a permutation of `0..n` that depends only on
/// `(seed, epoch)`, so resuming at `(epoch, position)` needs no RNG state at all.
pub fn epoch_order(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    DataRng::with_stream(seed, epoch).permutation(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_roundtrip_continues_stream() {
        let mut a = DataRng::with_stream(42, 3);
        // Odd number of 32-bit words consumed: below() and next_u64 mix, plus a shuffle.
        let _ = a.below(7);
        let _ = a.rng_mut().next_u32();
        a.shuffle(&mut [1, 2, 3, 4, 5]);
        let st = a.state();
        let json = serde_json::to_string(&st).unwrap();
        let mut b = DataRng::from_state(&serde_json::from_str(&json).unwrap()).unwrap();
        let xa: Vec<u64> = (0..50).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..50).map(|_| b.next_u64()).collect();
        assert_eq!(xa, xb);
        assert_eq!(a.state(), b.state());
    }

    #[test]
    fn permutations_are_valid_and_seed_dependent() {
        let p = epoch_order(7, 0, 100);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(p, epoch_order(7, 0, 100));
        assert_ne!(p, epoch_order(7, 1, 100));
        assert_ne!(p, epoch_order(8, 0, 100));
        assert_ne!(p, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut r = DataRng::new(1);
        let mut counts = [0u32; 5];
        for _ in 0..50_000 {
            counts[r.below(5) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
        let u: f64 = (0..10_000).map(|_| r.uniform()).sum::<f64>() / 10_000.0;
        assert!((u - 0.5).abs() < 0.02);
    }
}
