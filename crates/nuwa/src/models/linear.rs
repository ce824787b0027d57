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
