//! Softmax attention for the layers nobody probes: `softmax(q·kᵀ·scale + mask)·v` without materialising
//! every head's probabilities. Heads go to the cores; each works through blocks of at most
//! [`QUERY_BLOCK`] queries, so one head holds one block's scores (`QUERY_BLOCK × keys` f32) at a time.
//! Both products run on the packed kernels ([`super::gemm`]). Layers whose attention a pruner reads
//! keep computing the full probabilities where they are asked for.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::activation::exp;
use super::gemm::{Format, Packed, Rows};

/// Queries per block of scores.
const QUERY_BLOCK: usize = 128;

/// Which keys a query sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// All of them.
    None,
    /// Query `i` sees keys `0 ..= past + i` (the keys hold `past` cached positions, then the queries').
    Causal { past: usize },
}

/// `q` (heads, queries, d), `k` and `v` (heads, keys, d), all f32 on the CPU; returns (heads, queries, d).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: Mask) -> candle_core::Result<Tensor> {
    q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &Fused { scale: scale as f32, mask })
}

/// Whether [`attention`] can run on tensors like `q`.
pub fn supports(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == candle_core::DType::F32
}

struct Fused {
    scale: f32,
    mask: Mask,
}

impl CustomOp3 for Fused {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
            let (CpuStorage::F32(data), Some((a, b))) = (s, l.contiguous_offsets()) else {
                candle_core::bail!("fused-attention: f32 contiguous operands only")
            };
            Ok(&data[a..b])
        }
        let ((h, tq, d), (hk, tk, dk)) = (ql.shape().dims3()?, kl.shape().dims3()?);
        if (hk, dk) != (h, d) || vl.shape().dims3()? != (h, tk, d) {
            candle_core::bail!(
                "fused-attention: q {:?}, k {:?}, v {:?} do not match",
                ql.shape(),
                kl.shape(),
                vl.shape()
            )
        }
        if let Mask::Causal { past } = self.mask {
            if past + tq != tk {
                candle_core::bail!("fused-attention: {tq} causal queries after {past} cached keys, but {tk} keys");
            }
        }
        let (q, k, v) = (slice(q, ql)?, slice(k, kl)?, slice(v, vl)?);
        let mut out = vec![0f32; h * tq * d];
        use rayon::prelude::*;
        out.par_chunks_mut((tq * d).max(1)).enumerate().for_each(|(head, out)| {
            let (qs, ks) = (head * tq * d..(head + 1) * tq * d, head * tk * d..(head + 1) * tk * d);
            self.head(&q[qs], &k[ks.clone()], &v[ks], tq, tk, d, out);
        });
        Ok((CpuStorage::F32(out), Shape::from((h, tq, d))))
    }
}

impl Fused {
    /// One head: `out` (tq × d) from `q` (tq × d), `k` and `v` (tk × d).
    #[allow(clippy::too_many_arguments)]
    fn head(&self, q: &[f32], k: &[f32], v: &[f32], tq: usize, tk: usize, d: usize, out: &mut [f32]) {
        // Keys are the "weights" of q·kᵀ; vᵀ those of p·v.
        let keys = Packed::new(Rows::F32(k), tk, d, Format::F32);
        let values = Packed::transposed(v, tk, d);
        let mut scores = vec![0f32; QUERY_BLOCK.min(tq) * tk];
        for r0 in (0..tq).step_by(QUERY_BLOCK) {
            let rows = QUERY_BLOCK.min(tq - r0);
            let s = &mut scores[..rows * tk];
            keys.matmul(Rows::F32(&q[r0 * d..(r0 + rows) * d]), rows, None, s, 1);
            for (i, row) in s.chunks_exact_mut(tk).enumerate() {
                let seen = match self.mask {
                    Mask::None => tk,
                    Mask::Causal { past } => past + r0 + i + 1,
                };
                softmax_prefix(row, seen, self.scale);
            }
            values.matmul(Rows::F32(s), rows, None, &mut out[r0 * d..(r0 + rows) * d], 1);
        }
    }
}

/// `row[..seen]` ← softmax(row[..seen] · scale), the rest ← 0.
fn softmax_prefix(row: &mut [f32], seen: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the copy is compiled for.
        return unsafe { softmax_avx512(row, seen, scale) };
    }
    softmax_body(row, seen, scale)
}

/// The same loops compiled for 16-lane vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_avx512(row: &mut [f32], seen: usize, scale: f32) {
    softmax_body(row, seen, scale)
}

#[inline(always)]
fn softmax_body(row: &mut [f32], seen: usize, scale: f32) {
    let (live, masked) = row.split_at_mut(seen);
    masked.fill(0.0);
    // Sixteen lanes per reduction: a float sum or max in one sequence would not be vectorised.
    let lanes = |row: &[f32], init: f32, f: fn(f32, f32) -> f32| {
        let mut acc = [init; 16];
        let chunks = row.chunks_exact(16);
        let tail = chunks.remainder().iter().fold(init, |a, &x| f(a, x));
        for c in chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a = f(*a, x);
            }
        }
        acc.iter().fold(tail, |a, &x| f(a, x))
    };
    let max = lanes(live, f32::NEG_INFINITY, f32::max);
    live.iter_mut().for_each(|x| *x = exp((*x - max) * scale));
    let inv = 1.0 / lanes(live, 0.0, |a, x| a + x);
    live.iter_mut().for_each(|x| *x *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The fused result equals the reference formula, with and without a causal mask, across query
    /// blocks and uneven sizes.
    #[test]
    fn fused_attention_matches_the_formula() {
        let dev = Device::Cpu;
        for (h, tq, past, d, causal) in
            [(2, 1, 0, 8, false), (3, 200, 0, 40, true), (2, 5, 140, 64, true), (1, 130, 0, 32, false)]
        {
            let tk = past + tq;
            let q = Tensor::randn(0f32, 1.0, (h, tq, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (h, tk, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (h, tk, d), &dev).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let mask = if causal { Mask::Causal { past } } else { Mask::None };
            let got = attention(&q, &k, &v, scale, mask).unwrap();
            let mut scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
            if causal {
                let m: Vec<f32> = (0..tq)
                    .flat_map(|i| (0..tk).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
                    .collect();
                scores = scores.broadcast_add(&Tensor::from_vec(m, (tq, tk), &dev).unwrap()).unwrap();
            }
            let want = candle_nn::ops::softmax_last_dim(&scores).unwrap().matmul(&v).unwrap();
            assert_eq!(got.dims(), want.dims());
            let err = (got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let err = err.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 2e-5, "h {h} tq {tq} past {past} d {d}: max |Δ| {err}");
        }
    }
}
