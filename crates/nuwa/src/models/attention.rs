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
/// Fewer queries than this (decoding) are answered straight from the keys and values: packing them
/// would copy the whole cache for one row of scores.
const DIRECT_QUERIES: usize = 8;

/// Which keys a query sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// All of them.
    None,
    /// Query `i` sees keys `0 ..= past + i` (the keys hold `past` cached positions, then the queries').
    Causal { past: usize },
}

/// What the two products multiply: f32 values, or the values rounded to bf16 (sums in f32), which the
/// bf16 kernels (AMX where the CPU has it) multiply several times faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    F32,
    Bf16,
}

impl Products {
    /// bf16 for a model whose weights are bf16 (its linears already round their inputs to bf16), f32
    /// for f32, f16 and quantised weights.
    pub fn for_weights(weights: &super::linear::Weights) -> Self {
        match (weights.quantize, weights.dtype) {
            (None, Some(candle_core::DType::BF16)) => Products::Bf16,
            _ => Products::F32,
        }
    }
}

/// `q` (heads, queries, d) in f32 on the CPU; `k` and `v` (kv heads, keys, d) in f32, f16 or bf16 (a
/// half-precision cache). The kv heads divide the heads: head `h` reads kv head `h / (heads / kv heads)`,
/// so grouped-query attention needs no repeated copy of the cache. `k` and `v` may be views whose heads
/// lie apart (a KV cache's filled part): only each head's rows must be contiguous. Returns (heads,
/// queries, d). Decoding's few queries always multiply in f32.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Mask,
    products: Products,
) -> candle_core::Result<Tensor> {
    let rows_contiguous = |t: &Tensor| -> candle_core::Result<Tensor> {
        let (_, _, d) = t.dims3()?;
        match t.stride() {
            [_, s1, 1] if *s1 == d => Ok(t.clone()),
            _ => t.contiguous(),
        }
    };
    let fused = Fused { scale: scale as f32, mask, products };
    q.contiguous()?.apply_op3_no_bwd(&rows_contiguous(k)?, &rows_contiguous(v)?, &fused)
}

/// Whether [`attention`] can run on tensors like `q`.
pub fn supports(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == candle_core::DType::F32
}

struct Fused {
    scale: f32,
    mask: Mask,
    products: Products,
}

/// One operand's heads: head `i`'s `rows × d` values start at `data[start + i·head_stride]`.
struct Heads<'a, T> {
    data: &'a [T],
    start: usize,
    head_stride: usize,
    rows: usize,
    d: usize,
}

impl<'a, T> Heads<'a, T> {
    fn new(data: &'a [T], l: &Layout) -> candle_core::Result<Self> {
        let (_, rows, d) = l.shape().dims3()?;
        match l.stride() {
            &[head_stride, rs, 1] if rs == d || rows == 1 => {
                Ok(Self { data, start: l.start_offset(), head_stride, rows, d })
            }
            _ => candle_core::bail!("fused-attention: operands with contiguous rows only"),
        }
    }

    fn head(&self, i: usize) -> &'a [T] {
        let s = self.start + i * self.head_stride;
        &self.data[s..s + self.rows * self.d]
    }
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
        let ((h, tq, d), (hk, tk, dk)) = (ql.shape().dims3()?, kl.shape().dims3()?);
        if dk != d || hk == 0 || !h.is_multiple_of(hk) || vl.shape().dims3()? != (hk, tk, d) {
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
        let CpuStorage::F32(q) = q else { candle_core::bail!("fused-attention: f32 queries only") };
        let q = Heads::new(q, ql)?;
        let out = match (k, v) {
            (CpuStorage::F32(k), CpuStorage::F32(v)) => {
                self.run(&q, &Heads::new(k, kl)?, &Heads::new(v, vl)?, h, h / hk)
            }
            (CpuStorage::F16(k), CpuStorage::F16(v)) => {
                self.run(&q, &Heads::new(k, kl)?, &Heads::new(v, vl)?, h, h / hk)
            }
            (CpuStorage::BF16(k), CpuStorage::BF16(v)) => {
                self.run(&q, &Heads::new(k, kl)?, &Heads::new(v, vl)?, h, h / hk)
            }
            _ => candle_core::bail!("fused-attention: keys and values both f32, both f16 or both bf16"),
        };
        Ok((CpuStorage::F32(out), Shape::from((h, tq, d))))
    }
}

impl Fused {
    /// How many keys query `i` sees.
    fn seen(&self, i: usize, tk: usize) -> usize {
        match self.mask {
            Mask::None => tk,
            Mask::Causal { past } => past + i + 1,
        }
    }

    /// Every head, spread over the cores; `group` query heads share each head of `k` and `v`.
    fn run<T: Cached>(&self, q: &Heads<f32>, k: &Heads<T>, v: &Heads<T>, heads: usize, group: usize) -> Vec<f32> {
        let (tq, tk, d) = (q.rows, k.rows, q.d);
        let mut out = vec![0f32; heads * tq * d];
        use rayon::prelude::*;
        out.par_chunks_mut((tq * d).max(1)).enumerate().for_each(|(head, out)| {
            let (q, k, v) = (q.head(head), k.head(head / group), v.head(head / group));
            if tq < DIRECT_QUERIES {
                for (i, out) in out.chunks_exact_mut(d).enumerate() {
                    direct(&q[i * d..(i + 1) * d], k, v, self.seen(i, tk), self.scale, out);
                }
            } else {
                let (mut wide_k, mut wide_v) = (Vec::new(), Vec::new());
                self.head(q, T::widened(k, &mut wide_k), T::widened(v, &mut wide_v), tq, tk, d, out);
            }
        });
        out
    }

    /// One head: `out` (tq × d) from `q` (tq × d), `k` and `v` (tk × d).
    #[allow(clippy::too_many_arguments)]
    fn head(&self, q: &[f32], k: &[f32], v: &[f32], tq: usize, tk: usize, d: usize, out: &mut [f32]) {
        // Keys are the "weights" of q·kᵀ; vᵀ those of p·v. Where AMX multiplies bf16 the keys are padded
        // with zero rows to whole 32-blocks, so p·v's inputs fill its tiles; the padding's scores are
        // zeroed below.
        let format = match self.products {
            Products::F32 => Format::F32,
            Products::Bf16 => Format::Bf16Pairs,
        };
        let width = tk.next_multiple_of(super::gemm::input_multiple(format));
        let (mut padded_k, mut padded_v) = (Vec::new(), Vec::new());
        let (k, v) = if width == tk {
            (k, v)
        } else {
            for (padded, x) in [(&mut padded_k, k), (&mut padded_v, v)] {
                padded.extend_from_slice(x);
                padded.resize(width * d, 0.0);
            }
            (&padded_k[..], &padded_v[..])
        };
        let keys = Packed::new(Rows::F32(k), width, d, format);
        let values = Packed::transposed(v, width, d, format);
        let mut scores = vec![0f32; QUERY_BLOCK.min(tq) * width];
        for r0 in (0..tq).step_by(QUERY_BLOCK) {
            let rows = QUERY_BLOCK.min(tq - r0);
            let s = &mut scores[..rows * width];
            keys.matmul(Rows::F32(&q[r0 * d..(r0 + rows) * d]), rows, None, s, 1);
            for (i, row) in s.chunks_exact_mut(width).enumerate() {
                softmax_prefix(row, self.seen(r0 + i, tk), self.scale);
            }
            values.matmul(Rows::F32(s), rows, None, &mut out[r0 * d..(r0 + rows) * d], 1);
        }
    }
}

/// Cached keys and values: f32, or half precision widened to f32 as they are read.
trait Cached: Copy + Send + Sync {
    /// `src` as f32: itself, or widened into `scratch`.
    fn widened<'a>(src: &'a [Self], scratch: &'a mut Vec<f32>) -> &'a [f32];

    /// Sixteen values from `p` as f32.
    ///
    /// # Safety
    /// AVX-512F present; 16 values readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl Cached for f32 {
    fn widened<'a>(src: &'a [f32], _: &'a mut Vec<f32>) -> &'a [f32] {
        src
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

macro_rules! widened_half {
    ($($t:ty => $vector:ident),*) => {$(
        impl Cached for $t {
            #[cfg(target_arch = "x86_64")]
            #[inline]
            #[target_feature(enable = "avx512f")]
            unsafe fn load16(p: *const $t) -> std::arch::x86_64::__m512 {
                unsafe { widen::$vector(p) }
            }

            fn widened<'a>(src: &'a [$t], scratch: &'a mut Vec<f32>) -> &'a [f32] {
                scratch.resize(src.len(), 0.0);
                use half::slice::HalfFloatSliceExt;
                src.convert_to_f32_slice(scratch);
                scratch
            }
        }
    )*};
}
widened_half!(half::f16 => f16, half::bf16 => bf16);

/// Sixteen half-precision values widened at once.
#[cfg(target_arch = "x86_64")]
mod widen {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn f16(p: *const half::f16) -> __m512 {
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn bf16(p: *const half::bf16) -> __m512 {
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())))) }
    }
}

/// Cached rows widened per block: 16 rows of 128 take 8 KiB of f32, which stays in L1.
const DIRECT_ROWS: usize = 16;

/// One query `q` against `k` and `v` (keys × d) read in place: `out = softmax(q·kᵀ·scale)[..seen] · v`.
fn direct<T: Cached>(q: &[f32], k: &[T], v: &[T], seen: usize, scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the copy is compiled for.
        return unsafe { direct_avx512(q, k, v, seen, scale, out) };
    }
    direct_body(q, k, v, seen, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn direct_avx512<T: Cached>(q: &[f32], k: &[T], v: &[T], seen: usize, scale: f32, out: &mut [f32]) {
    // The usual head sizes (16 · lanes values) keep the query and the output in registers.
    unsafe {
        match q.len() {
            16 => direct_lanes::<T, 1>(q, k, v, seen, scale, out),
            32 => direct_lanes::<T, 2>(q, k, v, seen, scale, out),
            64 => direct_lanes::<T, 4>(q, k, v, seen, scale, out),
            80 => direct_lanes::<T, 5>(q, k, v, seen, scale, out),
            128 => direct_lanes::<T, 8>(q, k, v, seen, scale, out),
            _ => direct_body(q, k, v, seen, scale, out),
        }
    }
}

/// [`direct`] for `q.len() == 16 · L`: each key row is widened in registers as it is multiplied, and
/// the output's L vectors accumulate in registers over the values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn direct_lanes<T: Cached, const L: usize>(
    q: &[f32],
    k: &[T],
    v: &[T],
    seen: usize,
    scale: f32,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    /// Rows ahead to prefetch: the cache streams from memory, which the hardware prefetchers alone
    /// leave far below its bandwidth.
    const AHEAD_ROWS: usize = 8;
    let d = 16 * L;
    assert!(q.len() == d && out.len() == d && k.len() >= seen * d && v.len() >= seen * d);
    unsafe {
        let mut qv = [_mm512_setzero_ps(); L];
        for (l, qv) in qv.iter_mut().enumerate() {
            *qv = _mm512_loadu_ps(q.as_ptr().add(16 * l));
        }
        let mut scores = vec![0f32; seen];
        let (kp, vp) = (k.as_ptr(), v.as_ptr());
        let prefetch = |p: *const T, j: usize| {
            let ahead = p.wrapping_add((j + AHEAD_ROWS) * d).cast::<u8>();
            for line in (0..d * std::mem::size_of::<T>()).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
            }
        };
        for (j, score) in scores.iter_mut().enumerate() {
            prefetch(kp, j);
            let row = kp.add(j * d);
            let mut acc = [_mm512_setzero_ps(); 2];
            for (l, qv) in qv.iter().enumerate() {
                acc[l % 2] = _mm512_fmadd_ps(*qv, T::load16(row.add(16 * l)), acc[l % 2]);
            }
            *score = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        }
        softmax_body(&mut scores, seen, scale);
        let mut acc = [_mm512_setzero_ps(); L];
        for (j, &p) in scores.iter().enumerate() {
            prefetch(vp, j);
            let (p, row) = (_mm512_set1_ps(p), vp.add(j * d));
            for (l, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(p, T::load16(row.add(16 * l)), *acc);
            }
        }
        for (l, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * l), *acc);
        }
    }
}

#[inline(always)]
fn direct_body<T: Cached>(q: &[f32], k: &[T], v: &[T], seen: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    out.fill(0.0);
    if d == 0 {
        return;
    }
    let (k, v) = (&k[..seen * d], &v[..seen * d]);
    let mut scratch = Vec::new();
    let mut scores = Vec::with_capacity(seen);
    for block in k.chunks(DIRECT_ROWS * d) {
        scores.extend(T::widened(block, &mut scratch).chunks_exact(d).map(|key| dot(q, key)));
    }
    softmax_body(&mut scores, seen, scale);
    for (p, block) in scores.chunks(DIRECT_ROWS).zip(v.chunks(DIRECT_ROWS * d)) {
        for (p, value) in p.iter().zip(T::widened(block, &mut scratch).chunks_exact(d)) {
            out.iter_mut().zip(value).for_each(|(o, &x)| *o += p * x);
        }
    }
}

/// Sixteen independent accumulators, so the loop becomes vector FMAs.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
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
    /// blocks and uneven sizes (key counts off 32-blocks too), with query heads sharing kv heads, keys
    /// and values cached in f32, f16 and bf16, and, to bf16's precision, bf16 products.
    #[test]
    fn fused_attention_matches_the_formula() {
        let dev = Device::Cpu;
        // (heads, queries, cached keys, d, causal, query heads per kv head)
        let cases = [
            (2, 1, 0, 8, false, 1),
            (3, 200, 0, 40, true, 1),
            (2, 5, 140, 64, true, 1),
            (1, 130, 0, 32, false, 1),
            (2, 9, 40, 16, true, 1),
            (2, 100, 0, 64, false, 1),
            (6, 1, 50, 32, true, 3),
            (4, 20, 30, 16, true, 2),
            // Decoding at the head sizes with a register kernel of their own, and one without.
            (4, 1, 300, 128, true, 2),
            (2, 3, 20, 80, true, 1),
            (2, 2, 33, 48, true, 1),
        ];
        for (h, tq, past, d, causal, group) in cases {
            let (tk, hk) = (past + tq, h / group);
            let q = Tensor::randn(0f32, 1.0, (h, tq, d), &dev).unwrap();
            // Keys and values as a cache's filled part: heads further apart than their rows.
            let cache = || Tensor::randn(0f32, 1.0, (hk, tk + 7, d), &dev).unwrap().narrow(1, 0, tk).unwrap();
            let (k, v) = (cache(), cache());
            let scale = 1.0 / (d as f64).sqrt();
            let mask = if causal { Mask::Causal { past } } else { Mask::None };
            // Each query head against its kv head, the cache widened back to f32.
            let want = |k: &Tensor, v: &Tensor| {
                let repeat = |x: &Tensor| {
                    let x = x.to_dtype(DType::F32).unwrap().contiguous().unwrap();
                    Tensor::cat(&vec![&x; group], 1).unwrap().reshape((h, tk, d)).unwrap()
                };
                let (k, v) = (repeat(k), repeat(v));
                let mut scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
                if causal {
                    let m: Vec<f32> = (0..tq)
                        .flat_map(|i| (0..tk).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
                        .collect();
                    scores = scores.broadcast_add(&Tensor::from_vec(m, (tq, tk), &dev).unwrap()).unwrap();
                }
                candle_nn::ops::softmax_last_dim(&scores).unwrap().matmul(&v).unwrap()
            };
            let max_err = |got: Tensor, want: &Tensor| {
                assert_eq!(got.dims(), want.dims());
                let err = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                err.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap()
            };
            let case = format!("h {h} tq {tq} past {past} d {d} group {group}");
            for cached in [DType::F32, DType::F16, DType::BF16] {
                let (k, v) = (k.to_dtype(cached).unwrap(), v.to_dtype(cached).unwrap());
                let got = attention(&q, &k, &v, scale, mask, Products::F32).unwrap();
                let err = max_err(got, &want(&k, &v));
                assert!(err < 2e-5, "{case}, {cached:?} cache: max |Δ| {err}");
            }
            // q, k, v and the probabilities rounded to bf16 (2⁻⁹ relative): a few 10⁻³ on outputs of order 1.
            let err = max_err(attention(&q, &k, &v, scale, mask, Products::Bf16).unwrap(), &want(&k, &v));
            assert!(err < 2e-2, "bf16 products, {case}: max |Δ| {err}");
        }
    }
}
