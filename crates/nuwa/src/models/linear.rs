//! Linear layers whose weights may be quantised at load into llama.cpp's block formats (candle's
//! quantised matmul), one layer at a time, so a model never holds its dense weights whole.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

/// A weight format for the decoder's and projector's linears (`--quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Quantize {
    /// 8-bit, blocks of 32 with an f16 scale (8.5 bits a weight).
    Q8_0,
    /// 4-bit k-quant, super-blocks of 256 (4.5 bits a weight).
    Q4K,
}

impl Quantize {
    /// Storage per weight, scales included.
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Quantize::Q8_0 => 8.5,
            Quantize::Q4K => 4.5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Quantize::Q8_0 => "q8_0",
            Quantize::Q4K => "q4_k",
        }
    }

    /// The format for a weight whose rows have `k` inputs: this one when `k` fills its blocks, else the
    /// next finer one that does (q4_k → q8_0, as llama.cpp falls back), else none (kept dense).
    fn for_inputs(self, k: usize) -> Option<GgmlDType> {
        let fits = |d: GgmlDType| k.is_multiple_of(d.block_size());
        match self {
            Quantize::Q4K if fits(GgmlDType::Q4K) => Some(GgmlDType::Q4K),
            Quantize::Q4K | Quantize::Q8_0 if fits(GgmlDType::Q8_0) => Some(GgmlDType::Q8_0),
            _ => None,
        }
    }
}

/// `y = x·Wᵀ + b`, with `W` dense or quantised.
#[derive(Debug, Clone)]
pub enum Linear {
    Dense(candle_nn::Linear),
    Quantized { weight: QMatMul, bias: Option<Tensor> },
}

impl Linear {
    /// The layer `vb` names (`weight`, and `bias` when `bias`), quantised as `quantize` says.
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        quantize: Option<Quantize>,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let dense = candle_nn::linear_b(in_dim, out_dim, bias, vb)?;
        match quantize {
            Some(q) => Self::quantized(dense, q),
            None => Ok(Self::Dense(dense)),
        }
    }

    /// `dense` in format `q` where its shape allows (see [`Quantize`]); dense otherwise.
    pub fn quantized(dense: candle_nn::Linear, q: Quantize) -> candle_core::Result<Self> {
        let Some(format) = q.for_inputs(dense.weight().dim(1)?) else { return Ok(Self::Dense(dense)) };
        let weight = QMatMul::from_qtensor(QTensor::quantize(dense.weight(), format)?)?;
        Ok(Self::Quantized { weight, bias: dense.bias().cloned() })
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self, Self::Quantized { .. })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            // One row (decoding): candle's CPU matmul is far from the memory bandwidth this needs (in bf16
            // by an order of magnitude); the weights are streamed once, widened to f32 on the fly.
            Self::Dense(l) if is_gemv(l.weight(), x) => {
                let (n, k) = l.weight().dims2()?;
                let y = l.weight().apply_op2_no_bwd(&x.flatten_all()?, &Gemv)?.to_dtype(x.dtype())?;
                let mut dims = x.dims().to_vec();
                *dims.last_mut().expect("x has rows of k values") = n;
                debug_assert_eq!(x.elem_count(), k);
                let y = y.reshape(dims)?;
                match l.bias() {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            Self::Dense(l) => l.forward(x),
            Self::Quantized { weight, bias } => {
                let y = weight.forward(&x.contiguous()?)?;
                match bias {
                    Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
                    None => Ok(y),
                }
            }
        }
    }
}

fn is_gemv(w: &Tensor, x: &Tensor) -> bool {
    matches!(w.dtype(), candle_core::DType::BF16 | candle_core::DType::F32)
        && w.device().is_cpu()
        && w.is_contiguous()
        && w.dims2().is_ok_and(|(_, k)| x.elem_count() == k && x.dims().last() == Some(&k))
}

/// `W·x` for bf16 or f32 `W` (n, k) and one row `x` (k), accumulated in f32, rows split over the cores.
struct Gemv;

impl candle_core::CustomOp2 for Gemv {
    fn name(&self) -> &'static str {
        "gemv"
    }

    fn cpu_fwd(
        &self,
        w: &candle_core::CpuStorage,
        wl: &candle_core::Layout,
        x: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let (n, k) = wl.shape().dims2()?;
        let (Some((w0, w1)), Some((x0, x1))) = (wl.contiguous_offsets(), xl.contiguous_offsets()) else {
            candle_core::bail!("gemv needs contiguous operands")
        };
        let x: Vec<f32> = match x {
            CpuStorage::BF16(v) => v[x0..x1].iter().map(|v| v.to_f32()).collect(),
            CpuStorage::F32(v) => v[x0..x1].to_vec(),
            _ => candle_core::bail!("gemv: activations must be bf16 or f32"),
        };
        let mut out = vec![0f32; n];
        match w {
            CpuStorage::BF16(w) => gemv(&w[w0..w1], &x, k, &mut out),
            CpuStorage::F32(w) => gemv(&w[w0..w1], &x, k, &mut out),
            _ => candle_core::bail!("gemv: the weight must be bf16 or f32"),
        }
        Ok((CpuStorage::F32(out), candle_core::Shape::from(n)))
    }
}

/// A weight element that widens to f32 exactly.
pub trait Widen: Copy + Send + Sync {
    fn widen(self) -> f32;
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Widen for half::bf16 {
    /// The upper half of an f32: a shift.
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

/// `out[r] = Σ_j w[r·k + j] · x[j]`, rows split over the available cores.
pub fn gemv<W: Widen>(w: &[W], x: &[f32], k: usize, out: &mut [f32]) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(out.len().div_ceil(64)).max(1);
    let rows = out.len().div_ceil(threads);
    std::thread::scope(|s| {
        for (chunk, o) in out.chunks_mut(rows).enumerate() {
            let w = &w[chunk * rows * k..];
            s.spawn(move || {
                for (r, y) in o.iter_mut().enumerate() {
                    *y = dot(&w[r * k..(r + 1) * k], x);
                }
            });
        }
    });
}

fn dot<W: Widen>(w: &[W], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the function is compiled for.
        return unsafe { dot_avx512(w, x) };
    }
    dot_portable(w, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512<W: Widen>(w: &[W], x: &[f32]) -> f32 {
    dot_portable(w, x)
}

/// Sixteen independent accumulators, so the compiler turns the loop into vector FMAs.
#[inline(always)]
fn dot_portable<W: Widen>(w: &[W], x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (wc, xc) = (w.chunks_exact(16), x.chunks_exact(16));
    let tail: f32 = wc.remainder().iter().zip(xc.remainder()).map(|(&a, &b)| a.widen() * b).sum();
    for (a, b) in wc.zip(xc) {
        for i in 0..16 {
            acc[i] += a[i].widen() * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
