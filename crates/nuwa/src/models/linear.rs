//! Linear layers: weights packed at load for our own CPU kernels ([`super::gemm`]), dense f32/bf16/f16
//! or quantised into llama.cpp's block formats; on other devices candle's matmul and quantised matmul.
//! Either way one layer is converted at a time, so a model never holds a second copy of its weights.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, DType, Layout, Module, Shape, Tensor};
use candle_nn::VarBuilder;

use super::gemm::{self, Format, Packed, Rows};

/// A weight format for the decoder's and projector's linears (`--quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Quantize {
    /// 8-bit, blocks of 32 with an f16 scale (8.5 bits a weight).
    Q8_0,
    /// 4-bit k-quant, super-blocks of 256 (4.5 bits a weight in llama.cpp's files).
    Q4K,
}

impl Quantize {
    /// Storage per weight as held here, scales included (q4_k keeps its six-bit scales as bytes).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Quantize::Q8_0 => 8.5,
            Quantize::Q4K => 4.625,
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
    fn for_inputs(self, k: usize) -> Option<Format> {
        let fits = |f: Format| gemm::quantized_fits(f, k);
        match self {
            Quantize::Q4K if fits(Format::Q4K) => Some(Format::Q4K),
            Quantize::Q4K | Quantize::Q8_0 if fits(Format::Q8_0) => Some(Format::Q8_0),
            _ => None,
        }
    }
}

/// How a model's linears hold their weights: chosen at load, never read from the checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Weights {
    /// Dense weights in this dtype rather than the activations' (half-precision weights computing in
    /// f32 on the CPU).
    pub dtype: Option<DType>,
    /// Quantised at load (`--quantize`); where it applies, it wins over `dtype`.
    pub quantize: Option<Quantize>,
}

impl Weights {
    /// The KV cache's dtype for activations in `compute` on the CPU: half precision when the weights
    /// are (bf16 for bf16 weights; f16 for f16 and quantised ones, as llama.cpp caches), which halves
    /// the cache and what decoding reads of it; f32 weights cache f32. Elsewhere the activations'.
    pub fn cache_dtype(&self, compute: DType, cpu: bool) -> DType {
        match (self.quantize, self.dtype) {
            (None, Some(dtype)) => dtype,
            (Some(_), _) if cpu && compute == DType::F32 => DType::F16,
            _ => compute,
        }
    }

    /// `vb` reading weights in the dtype they are held in, so a half-precision checkpoint is never
    /// widened to the activations' dtype on its way to being packed.
    pub fn reader<'a>(&self, vb: &VarBuilder<'a>) -> VarBuilder<'a> {
        match (self.quantize, self.dtype) {
            (None, Some(dtype)) => vb.to_dtype(dtype),
            _ => vb.clone(),
        }
    }
}

/// `y = x·Wᵀ + b`, with `W` packed for our CPU kernels, or for candle on other devices.
#[derive(Debug, Clone)]
pub enum Linear {
    /// f32, bf16, f16, q8_0 or q4_k weights on the CPU, packed once (see [`gemm`]); the bias in f32.
    Packed { weight: Arc<Packed>, bias: Option<Arc<[f32]>> },
    /// Any other device or dtype: candle's matmul.
    Dense(candle_nn::Linear),
    /// Quantised on another device: candle's quantised matmul.
    Quantized { weight: QMatMul, bias: Option<Tensor> },
}

impl Linear {
    /// `weight` (out × in) and `bias`, packed where the device and dtype allow. The tensors are
    /// dropped once packed, so a weight is held once.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        let format = match weight.dtype() {
            DType::F32 => Format::F32,
            DType::BF16 => Format::Bf16Pairs,
            DType::F16 => Format::F16,
            _ => return Ok(Self::Dense(candle_nn::Linear::new(weight, bias))),
        };
        if !weight.device().is_cpu() {
            return Ok(Self::Dense(candle_nn::Linear::new(weight, bias)));
        }
        Self::packed(weight, bias, format)
    }

    /// `weight` (a CPU tensor of a dtype [`Rows`] reads) packed in `format`.
    fn packed(weight: Tensor, bias: Option<Tensor>, format: Format) -> candle_core::Result<Self> {
        let (n, k) = weight.dims2()?;
        let weight = weight.contiguous()?;
        let packed = {
            let (storage, layout) = weight.storage_and_layout();
            let candle_core::Storage::Cpu(storage) = &*storage else { unreachable!("checked: a CPU tensor") };
            let (o0, o1) = layout.contiguous_offsets().expect("made contiguous");
            let Some(rows) = Rows::of(storage, o0..o1) else {
                candle_core::bail!("packed linear: weights must be f32, bf16 or f16, not {:?}", weight.dtype())
            };
            Packed::new(rows, n, k, format)
        };
        let bias = match bias {
            Some(b) => Some(Arc::from(b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)),
            None => None,
        };
        Ok(Self::Packed { weight: Arc::new(packed), bias })
    }

    /// The layer `vb` names (`weight`, and `bias` when `bias`), held as `weights` says.
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        weights: Weights,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Self::load_fused(in_dim, &[(out_dim, vb)], bias, weights)
    }

    /// Several layers reading the same input as one (their outputs side by side, in `parts`' order):
    /// one product per call instead of one per layer, the input converted and packed once. Each output
    /// is computed exactly as its own layer would. (One part is a plain layer: `cat` of one tensor is
    /// that tensor.)
    pub fn load_fused(
        in_dim: usize,
        parts: &[(usize, VarBuilder)],
        bias: bool,
        weights: Weights,
    ) -> candle_core::Result<Self> {
        let weight = parts
            .iter()
            .map(|(out, vb)| weights.reader(vb).get((*out, in_dim), "weight"))
            .collect::<candle_core::Result<Vec<_>>>()?;
        // The parts are dropped before the fused weight is packed: one copy of it in flight, not two.
        let weight = Tensor::cat(&weight, 0)?;
        let bias = if bias {
            let b = parts.iter().map(|(out, vb)| vb.get(*out, "bias")).collect::<candle_core::Result<Vec<_>>>()?;
            Some(Tensor::cat(&b, 0)?)
        } else {
            None
        };
        Self::held_as(weight, bias, weights)
    }

    /// `weight` and `bias` held as `weights` says.
    pub fn held_as(weight: Tensor, bias: Option<Tensor>, weights: Weights) -> candle_core::Result<Self> {
        match (weights.quantize, weights.dtype) {
            (Some(q), _) => Self::quantized(weight, bias, q),
            (None, Some(dtype)) => Self::new(weight.to_dtype(dtype)?, bias),
            (None, None) => Self::new(weight, bias),
        }
    }

    /// `weight` in format `q` where its shape allows (see [`Quantize`]); dense otherwise.
    pub fn quantized(weight: Tensor, bias: Option<Tensor>, q: Quantize) -> candle_core::Result<Self> {
        let Some(format) = q.for_inputs(weight.dim(1)?) else { return Self::new(weight, bias) };
        if weight.device().is_cpu() {
            return Self::packed(weight, bias, format);
        }
        let dtype = if format == Format::Q4K { GgmlDType::Q4K } else { GgmlDType::Q8_0 };
        let weight = QMatMul::from_qtensor(QTensor::quantize(&weight, dtype)?)?;
        Ok(Self::Quantized { weight, bias })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Packed { weight, bias } => {
                x.contiguous()?.apply_op1_no_bwd(&PackedMatmul { weight, bias: bias.as_deref() })
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

/// `x·Wᵀ + b` on the packed kernels: f32 accumulation, the result in `x`'s dtype.
struct PackedMatmul<'a> {
    weight: &'a Packed,
    bias: Option<&'a [f32]>,
}

impl candle_core::CustomOp1 for PackedMatmul<'_> {
    fn name(&self) -> &'static str {
        "packed-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.weight.dims();
        let Some((o0, o1)) = layout.contiguous_offsets() else {
            candle_core::bail!("packed-matmul: x is not contiguous")
        };
        let mut dims = layout.shape().dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == k => *last = n,
            _ => candle_core::bail!("packed-matmul: x of shape {:?} has no last dimension of {k}", layout.shape()),
        }
        let m = (o1 - o0) / k.max(1);
        let mut y = vec![0f32; m * n];
        let threads = candle_core::utils::get_num_threads();
        let Some(rows) = Rows::of(x, o0..o1) else {
            candle_core::bail!(
                "packed-matmul: activations must be f32, bf16 or f16, not {:?}",
                candle_core::backend::BackendStorage::dtype(x)
            )
        };
        self.weight.matmul(rows, m, self.bias, &mut y, threads);
        let y = match x {
            CpuStorage::BF16(_) => CpuStorage::BF16(narrow(&y, half::bf16::from_f32)),
            CpuStorage::F16(_) => CpuStorage::F16(narrow(&y, half::f16::from_f32)),
            _ => CpuStorage::F32(y),
        };
        Ok((y, Shape::from(dims)))
    }
}

/// f32 results rounded to a half-precision dtype, spread over the cores when there are many.
fn narrow<T: Send + Copy + Default>(y: &[f32], f: impl Fn(f32) -> T + Sync) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = vec![T::default(); y.len()];
    out.par_chunks_mut(1 << 16).zip(y.par_chunks(1 << 16)).for_each(|(o, y)| {
        o.iter_mut().zip(y).for_each(|(o, &y)| *o = f(y));
    });
    out
}
