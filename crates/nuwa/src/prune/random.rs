//! Random selection (Nüwa's appendix B.3 baseline) and a fixed, user-given selection. The reference's
//! torch generator is not reproducible off its GPU, so the indices come from our own seeded generator.

use crate::{Error, Result};

/// `k` distinct indices out of `0..n`, ascending, uniform, decided by `seed` alone.
pub fn indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    use rand::{seq::index::sample, SeedableRng};
    let mut chosen = sample(&mut rand::rngs::StdRng::seed_from_u64(seed), n, k.min(n)).into_vec();
    chosen.sort_unstable();
    chosen
}

/// A user's list of patches to keep, checked against a grid of `n` patches and put in raster order.
pub fn manual(keep: &[usize], n: usize) -> Result<Vec<usize>> {
    let mut sorted = keep.to_vec();
    sorted.sort_unstable();
    if let Some(&bad) = sorted.iter().find(|&&i| i >= n) {
        return Err(Error::InvalidArgument(format!("--keep-file: patch index {bad} is outside the {n}-patch grid")));
    }
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::InvalidArgument(format!("--keep-file: patch index {} is listed twice", w[0])));
    }
    if sorted.is_empty() {
        return Err(Error::InvalidArgument("--keep-file: the list of patches to keep is empty".into()));
    }
    Ok(sorted)
}
