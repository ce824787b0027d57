//! DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning", CVPR 2025): at the decoder's
//! input, greedily pick the projected tokens that are most different from those already picked
//! (max–min cosine distance); contiguous positions.

use crate::generation::argmax;
use candle_core::{DType, Tensor};

/// Picks `k` of the rows of `v` (N, D), returning them in the order they were chosen.
pub fn select(v: &Tensor, k: usize) -> crate::Result<Vec<usize>> {
    let v = v.to_dtype(DType::F32)?;
    let unit = v.broadcast_div(&v.sqr()?.sum_keepdim(1)?.sqrt()?)?;
    let dist = (1.0 - unit.matmul(&unit.t()?)?)?.to_vec2::<f32>()?;
    let n = dist.len();
    let k = k.min(n);
    // Step 0: the token whose nearest other token is farthest (second-smallest of its column; the
    // smallest is itself).
    let second_smallest = |j: usize| {
        let (mut a, mut b) = (f32::INFINITY, f32::INFINITY);
        for row in &dist {
            let d = row[j];
            if d < a {
                b = a;
                a = d;
            } else if d < b {
                b = d;
            }
        }
        b
    };
    let first = argmax(&(0..n).map(second_smallest).collect::<Vec<_>>()) as usize;
    let mut order = vec![first];
    // Distance of each token to the nearest chosen one.
    let mut nearest: Vec<f32> = dist[first].clone();
    while order.len() < k {
        let next = argmax(&nearest) as usize;
        order.push(next);
        for (m, &d) in nearest.iter_mut().zip(&dist[next]) {
            *m = m.min(d);
        }
    }
    Ok(order)
}
