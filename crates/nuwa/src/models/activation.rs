//! Elementwise activations of f32 CPU tensors in one vectorised pass spread over the cores (candle's
//! take one scalar pass per operation: three for `x·σ(1.702x)`). Other tensors go through candle.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

/// `x·σ(1.702·x)` (CLIP's quick GELU).
pub fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if !is_cpu_f32(x) {
        return x * candle_nn::ops::sigmoid(&(x * 1.702)?)?;
    }
    x.contiguous()?.apply_op1_no_bwd(&QuickGelu)
}

/// `silu(gate)·up` (the gated MLP of LLaMA and Qwen).
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if !is_cpu_f32(gate) || !is_cpu_f32(up) || gate.shape() != up.shape() {
        return candle_nn::ops::silu(gate)? * up;
    }
    gate.contiguous()?.apply_op2_no_bwd(&up.contiguous()?, &SiluMul)
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

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        u: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (f32s(g, gl)?, f32s(u, ul)?);
        Ok((CpuStorage::F32(map(g, u, |g, u| g / (1.0 + exp(-g)) * u)), gl.shape().clone()))
    }
}

/// `f(a[i], b[i])` for every `i`, in chunks over the cores, each compiled for AVX-512 where the CPU has it.
fn map(a: &[f32], b: &[f32], f: fn(f32, f32) -> f32) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(1 << 14).zip(a.par_chunks(1 << 14).zip(b.par_chunks(1 << 14))).for_each(|(o, (a, b))| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the copy is compiled for.
            return unsafe { chunk_avx512(o, a, b, f) };
        }
        chunk(o, a, b, f)
    });
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chunk_avx512(o: &mut [f32], a: &[f32], b: &[f32], f: fn(f32, f32) -> f32) {
    chunk(o, a, b, f)
}

#[inline(always)]
fn chunk(o: &mut [f32], a: &[f32], b: &[f32], f: fn(f32, f32) -> f32) {
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
    let i = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let f = x - i * LN2_HI - i * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * f + c;
    }
    p * f32::from_bits(((i as i32 + 127) as u32) << 23)
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
        let got = silu_mul(&x, &y).unwrap();
        let want = (candle_nn::ops::silu(&x).unwrap() * &y).unwrap();
        assert!(max(got, want).to_scalar::<f32>().unwrap() < 1e-5);
    }
}
