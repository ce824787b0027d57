//! Elementwise activations of f32 CPU tensors in one vectorised pass spread over the cores (candle's
//! take one scalar pass per operation: three for `x·σ(1.702x)`). Other tensors go through candle.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// `x·σ(1.702·x)` (CLIP's quick GELU).
pub fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if !is_cpu_f32(x) {
        return x * candle_nn::ops::sigmoid(&(x * 1.702)?)?;
    }
    x.contiguous()?.apply_op1_no_bwd(&QuickGelu)
}

/// `silu(gate)·up` (the gated MLP of LLaMA and Qwen), where the last dimension of `x` holds `gate`
/// then `up` (their projections fused).
pub fn silu_mul_halves(x: &Tensor) -> candle_core::Result<Tensor> {
    let last = x.dims().last().copied().unwrap_or(0);
    if !last.is_multiple_of(2) {
        candle_core::bail!("silu_mul_halves: the last dimension {last} is not gate and up side by side");
    }
    if !is_cpu_f32(x) {
        let half = |from| x.narrow(candle_core::D::Minus1, from, last / 2);
        return candle_nn::ops::silu(&half(0)?)? * half(last / 2)?;
    }
    x.contiguous()?.apply_op1_no_bwd(&SiluMulHalves)
}

fn is_cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("activation: a contiguous f32 tensor was expected"),
    }
}

struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l)?;
        Ok((CpuStorage::F32(map(x, x, |x, _| x / (1.0 + exp(-1.702 * x)))), l.shape().clone()))
    }
}

struct SiluMulHalves;

impl CustomOp1 for SiluMulHalves {
    fn name(&self) -> &'static str {
        "silu-mul-halves"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l)?;
        let mut dims = l.shape().dims().to_vec();
        let half = dims.last().copied().unwrap_or(0) / 2;
        if let Some(last) = dims.last_mut() {
            *last = half;
        }
        let mut out = vec![0f32; x.len() / 2];
        // Rows in chunks of about 16 K outputs, each chunk's rows compiled for AVX-512 where present.
        if let Some(rows) = (1usize << 14).checked_div(half) {
            use rayon::prelude::*;
            let rows = rows.max(1);
            out.par_chunks_mut(rows * half).zip(x.par_chunks(rows * 2 * half)).for_each(|(o, x)| {
                for (o, x) in o.chunks_exact_mut(half).zip(x.chunks_exact(2 * half)) {
                    let (g, u) = x.split_at(half);
                    chunk_dispatch(o, g, u, silu_times);
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[inline(always)]
fn silu_times(g: f32, u: f32) -> f32 {
    g / (1.0 + exp(-g)) * u
}

/// `f(a[i], b[i])` for every `i`, in chunks over the cores, each compiled for AVX-512 where the CPU has it.
/// Generic over `f` so that it is inlined into the vector loop (a function pointer stays a scalar call
/// per element).
fn map<F: Fn(f32, f32) -> f32 + Copy + Sync>(a: &[f32], b: &[f32], f: F) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(1 << 14)
        .zip(a.par_chunks(1 << 14).zip(b.par_chunks(1 << 14)))
        .for_each(|(o, (a, b))| chunk_dispatch(o, a, b, f));
    out
}

/// `o[i] = f(a[i], b[i])`, compiled for AVX-512 where the CPU has it.
fn chunk_dispatch<F: Fn(f32, f32) -> f32>(o: &mut [f32], a: &[f32], b: &[f32], f: F) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the copy is compiled for.
        return unsafe { chunk_avx512(o, a, b, f) };
    }
    chunk(o, a, b, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chunk_avx512<F: Fn(f32, f32) -> f32>(o: &mut [f32], a: &[f32], b: &[f32], f: F) {
    chunk(o, a, b, f)
}

#[inline(always)]
fn chunk<F: Fn(f32, f32) -> f32>(o: &mut [f32], a: &[f32], b: &[f32], f: F) {
    o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&a, &b))| *o = f(a, b));
}

/// `eˣ` to within a few ulp, in a form the compiler vectorises: `eˣ = 2ⁱ·eᶠ` with `i = round(x/ln 2)`,
/// `f = x − i·ln 2` (ln 2 in two parts, so `f` is exact enough) and `eᶠ` by its Taylor series to degree 7
/// (`|f| ≤ ln 2 / 2`, truncation below 6·10⁻⁹). Inputs are clamped to [−87, 88] (about 10⁻³⁸ … 10³⁸).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round to nearest by adding and subtracting 1.5·2²³ (`f32::round` is a libm call, not vectorised).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let i = shifted - ROUND;
    let f = x - i * LN2_HI - i * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * f + c;
    }
    // `shifted` lies in [2²³, 2²⁴), where one unit is one ulp: its bits are ROUND's plus `i`. Reading
    // them (instead of `i as i32`, whose saturating cast stays scalar) keeps the whole function in vectors.
    let i = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(i.wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exp_is_accurate_over_its_range() {
        for i in 0..40_000 {
            let x = -87.0 + i as f32 * (87.0 + 88.0) / 40_000.0;
            let (got, want) = (exp(x), x.exp());
            assert!((got - want).abs() <= 4.0 * f32::EPSILON * want, "exp({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn fused_activations_match_candle() {
        let x = Tensor::randn(0f32, 4.0, (3, 70_001), &Device::Cpu).unwrap();
        let y = Tensor::randn(0f32, 1.0, (3, 70_001), &Device::Cpu).unwrap();
        let max = |a: Tensor, b: Tensor| (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let got = quick_gelu(&x).unwrap();
        let want = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
        assert!(max(got, want).to_scalar::<f32>().unwrap() < 1e-5);
        // Rows of gate then up; odd row lengths and several rows per parallel chunk.
        let fused = Tensor::cat(&[&x, &y], 1).unwrap();
        let got = silu_mul_halves(&fused).unwrap();
        let want = (candle_nn::ops::silu(&x).unwrap() * &y).unwrap();
        assert!(max(got, want).to_scalar::<f32>().unwrap() < 1e-5);
        let small = Tensor::randn(0f32, 3.0, (3001, 14), &Device::Cpu).unwrap();
        let (g, u) = (small.narrow(1, 0, 7).unwrap(), small.narrow(1, 7, 7).unwrap());
        let want = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
        assert!(max(silu_mul_halves(&small).unwrap(), want).to_scalar::<f32>().unwrap() < 1e-5);
    }
}
