//! Portable randomness for the glyph world's committed data: ChaCha8 streams plus our own
//! uniform index and shuffle, so the files depend only on the ChaCha8 keystream and
//! `seed_from_u64` (both fixed algorithms), not on `rand`'s distribution code.
use rand::rngs::ChaCha8Rng;
use rand::{Rng, SeedableRng};

/// A ChaCha8 generator for `seed` on an independent `stream` (e.g. one stream per tag).
pub fn seeded(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Uniform integer in `0..n` by rejection (no modulo bias). Panics if `n == 0`.
pub fn below<R: Rng + ?Sized>(rng: &mut R, n: usize) -> usize {
    assert!(n > 0, "below(0)");
    let n = n as u64;
    let zone = u64::MAX - u64::MAX % n;
    loop {
        let x = rng.next_u64();
        if x < zone {
            return (x % n) as usize;
        }
    }
}

/// Fisher–Yates shuffle.
pub fn shuffle<T, R: Rng + ?Sized>(rng: &mut R, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, below(rng, i + 1));
    }
}

/// `k` distinct indices of `0..n`, uniformly (partial Fisher–Yates), in draw order.
pub fn sample_distinct<R: Rng + ?Sized>(rng: &mut R, n: usize, k: usize) -> Vec<usize> {
    assert!(k <= n, "cannot draw {k} distinct of {n}");
    let mut pool: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + below(rng, n - i);
        pool.swap(i, j);
    }
    pool.truncate(k);
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_and_covers() {
        let mut rng = seeded(1, 0);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[below(&mut rng, 7)] += 1;
        }
        // Each bucket ~1000; a 6-sigma band.
        assert!(seen.iter().all(|&s| (800..1200).contains(&s)), "{seen:?}");
    }

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| seeded(5, 0).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(seeded(5, 0).next_u64(), seeded(5, 1).next_u64());
    }

    #[test]
    fn sample_distinct_is_distinct() {
        let mut rng = seeded(2, 0);
        for k in 0..=10 {
            let mut v = sample_distinct(&mut rng, 10, k);
            v.sort();
            v.dedup();
            assert_eq!(v.len(), k);
        }
    }
}
