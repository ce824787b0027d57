//! Qwen2.5-VL's vision tower (SPEC-qwen2.5-vl §5): patch embedding as one matmul, rows permuted once into
//! window order, 2-D RoPE, RMSNorm blocks with gated MLPs attending within 4×4-merged-token windows (full
//! attention in the listed blocks), and the 2×2 patch merger. Attention is computed per window, and for a
//! full-attention block in chunks of query rows (at most 256 MiB of probabilities), so no patches×patches
//! matrix is ever held; the chunks' column sums give the saliency of the block that asks for it.

use super::config::VisionConfig;
use candle_core::{DType, Module, Tensor};
use candle_nn::{rms_norm, RmsNorm, VarBuilder};

use crate::models::attention::Products;
use crate::models::linear::Linear;
use std::collections::BTreeMap;

/// The tower's RMSNorm epsilon (fixed in the model, not configurable).
const EPS: f64 = 1e-6;
/// Attention probabilities held at once in a full-attention block, in f32 values (256 MiB): the query
/// rows per chunk follow from the heads and keys.
pub const PROBS_PER_CHUNK: usize = 64 << 20;

/// Window order of an `hm`×`wm` merged grid with windows of `side` merged tokens: the raster index of
/// each merged token in window order, and the window boundaries in patch rows (`merge²` per token).
pub fn window_index(hm: usize, wm: usize, side: usize, merge: usize) -> (Vec<usize>, Vec<usize>) {
    let mut order = Vec::with_capacity(hm * wm);
    let mut bounds = vec![0];
    for wr in (0..hm).step_by(side) {
        for wc in (0..wm).step_by(side) {
            for r in wr..(wr + side).min(hm) {
                order.extend((wc..(wc + side).min(wm)).map(|c| r * wm + c));
            }
            bounds.push(order.len() * merge * merge);
        }
    }
    (order, bounds)
}

/// What a forward pass keeps besides the merged tokens.
#[derive(Debug, Clone, Default)]
pub struct TowerRequest {
    /// Blocks whose outputs to return (window order).
    pub block_outputs: Vec<usize>,
    /// Blocks whose outputs are averaged (window order), e.g. Nüwa's similarity features.
    pub mean_of: Option<std::ops::RangeInclusive<usize>>,
    /// The block whose attention column sums (head-averaged, summed over queries) to return.
    pub saliency_block: Option<usize>,
    /// Attention probabilities held at once; `None`: [`PROBS_PER_CHUNK`].
    pub probs_per_chunk: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct TowerOutput {
    /// Merger outputs in window order, (N, out_hidden).
    pub merged: Tensor,
    pub blocks: BTreeMap<usize, Tensor>,
    pub mean: Option<Tensor>,
    /// Per patch row, window order.
    pub saliency: Option<Vec<f32>>,
    /// Raster index of each merged token in window order.
    pub window_index: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Block {
    norm1: RmsNorm,
    norm2: RmsNorm,
    qkv: Linear,
    proj: Linear,
    /// `gate_proj` and `up_proj` fused.
    gate_up: Linear,
    down: Linear,
    heads: usize,
    products: Products,
}

impl Block {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            norm1: rms_norm(d, EPS, vb.pp("norm1"))?,
            norm2: rms_norm(d, EPS, vb.pp("norm2"))?,
            qkv: Linear::load(d, 3 * d, true, cfg.weights(), vb.pp("attn").pp("qkv"))?,
            proj: Linear::load(d, d, true, cfg.weights(), vb.pp("attn").pp("proj"))?,
            gate_up: Linear::load_fused(
                d,
                &[(i, vb.pp("mlp").pp("gate_proj")), (i, vb.pp("mlp").pp("up_proj"))],
                true,
                cfg.weights(),
            )?,
            down: Linear::load(i, d, true, cfg.weights(), vb.pp("mlp").pp("down_proj"))?,
            heads: cfg.num_heads,
            products: Products::for_weights(&cfg.weights()),
        })
    }

    /// One block over `x` (N_p, D) whose attention is restricted to `segments` (row ranges); with
    /// `saliency`, also the head-mean attention each row receives, summed over all queries.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        segments: &[(usize, usize)],
        saliency: bool,
        probs_per_chunk: usize,
    ) -> candle_core::Result<(Tensor, Option<Vec<f32>>)> {
        let (n, d) = x.dims2()?;
        let hd = d / self.heads;
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?;
        // (1, heads, N_p, hd) each, RoPE on q and k.
        let split = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(1, i * d, d)?.reshape((1, n, self.heads, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = candle_nn::rotary_emb::rope(&split(0)?, cos, sin)?.squeeze(0)?;
        let k = candle_nn::rotary_emb::rope(&split(1)?, cos, sin)?.squeeze(0)?;
        let v = split(2)?.squeeze(0)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut outs = Vec::with_capacity(segments.len());
        let mut sums = saliency.then(|| vec![0f32; n]);
        for &(s, e) in segments {
            let (ks, vs) = (k.narrow(1, s, e - s)?, v.narrow(1, s, e - s)?);
            if sums.is_none() && crate::models::attention::supports(&q) {
                let qs = q.narrow(1, s, e - s)?;
                outs.push(crate::models::attention::attention(
                    &qs,
                    &ks,
                    &vs,
                    scale,
                    crate::models::attention::Mask::None,
                    self.products,
                )?);
                continue;
            }
            let kt = ks.t()?.contiguous()?;
            let chunk = (probs_per_chunk / (self.heads * (e - s))).max(1);
            let mut start = s;
            while start < e {
                let len = chunk.min(e - start);
                let qs = q.narrow(1, start, len)?;
                let scores = (qs.matmul(&kt)? * scale)?.to_dtype(DType::F32)?;
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                if let Some(sums) = sums.as_mut() {
                    let col = (probs.sum(1)?.sum(0)? / self.heads as f64)?.to_vec1::<f32>()?;
                    for (acc, c) in sums[s..e].iter_mut().zip(col) {
                        *acc += c;
                    }
                }
                outs.push(probs.to_dtype(vs.dtype())?.matmul(&vs)?);
                start += len;
            }
        }
        // (heads, N_p, hd) -> (N_p, D)
        let attn = Tensor::cat(&outs, 1)?.transpose(0, 1)?.reshape((n, d))?;
        let x = (x + self.proj.forward(&attn)?)?;
        let y = self.norm2.forward(&x)?;
        let gated = crate::models::activation::silu_mul_halves(&self.gate_up.forward(&y)?)?;
        let mlp = self.down.forward(&gated)?;
        Ok(((x + mlp)?, sums))
    }
}

/// The 2×2 patch merger: RMSNorm per patch row, four rows concatenated, a GELU MLP.
#[derive(Debug, Clone)]
pub struct Merger {
    ln_q: RmsNorm,
    mlp0: Linear,
    mlp2: Linear,
    group: usize,
}

impl Merger {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let group = cfg.spatial_merge_size * cfg.spatial_merge_size;
        let wide = cfg.hidden_size * group;
        Ok(Self {
            ln_q: rms_norm(cfg.hidden_size, EPS, vb.pp("ln_q"))?,
            mlp0: Linear::load(wide, wide, true, cfg.weights(), vb.pp("mlp").pp("0"))?,
            mlp2: Linear::load(wide, cfg.out_hidden_size, true, cfg.weights(), vb.pp("mlp").pp("2"))?,
            group,
        })
    }

    /// (N_p, D) patch rows, each merged token's rows consecutive → (N_p / 4, out_hidden).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, d) = x.dims2()?;
        let z = self.ln_q.forward(x)?.reshape((n / self.group, d * self.group))?;
        self.mlp2.forward(&self.mlp0.forward(&z)?.gelu_erf()?)
    }
}

#[derive(Debug, Clone)]
pub struct VisionTower {
    patch_embed: Linear,
    blocks: Vec<Block>,
    pub merger: Merger,
    cfg: VisionConfig,
}

impl VisionTower {
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let values = cfg.patch_values();
        let w = vb.pp("patch_embed").pp("proj").get(
            (cfg.hidden_size, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size),
            "weight",
        )?;
        // Kernel = stride: the Conv3d is a matmul over the flattened patch row.
        let patch_embed = Linear::held_as(w.reshape((cfg.hidden_size, values))?, None, cfg.weights())?;
        let blocks =
            (0..cfg.depth).map(|i| Block::new(cfg, vb.pp("blocks").pp(i))).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { patch_embed, blocks, merger: Merger::new(cfg, vb.pp("merger"))?, cfg: cfg.clone() })
    }

    /// X₀, the patch embedding of `pixels` (N_p, values) in processor row order.
    pub fn patch_embed(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        self.patch_embed.forward(pixels)
    }

    /// (cos, sin), (N_p, head_dim/2), of the 2-D RoPE for patch rows in processor order.
    fn rope(
        &self,
        grid_h: usize,
        grid_w: usize,
        dtype: DType,
        dev: &candle_core::Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let m = self.cfg.spatial_merge_size;
        let quarter = self.cfg.head_dim() / 4;
        let freqs: Vec<f32> =
            (0..quarter).map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / (2 * quarter) as f32)).collect();
        let mut angles = Vec::with_capacity(grid_h * grid_w * 2 * quarter);
        for by in 0..grid_h / m {
            for bx in 0..grid_w / m {
                for dy in 0..m {
                    for dx in 0..m {
                        let (row, col) = ((by * m + dy) as f32, (bx * m + dx) as f32);
                        angles.extend(freqs.iter().map(|f| row * f));
                        angles.extend(freqs.iter().map(|f| col * f));
                    }
                }
            }
        }
        let angles = Tensor::from_vec(angles, (grid_h * grid_w, 2 * quarter), dev)?;
        Ok((angles.cos()?.to_dtype(dtype)?, angles.sin()?.to_dtype(dtype)?))
    }

    /// The tower over `pixels` (N_p, values) of a `grid_h`×`grid_w` patch grid.
    pub fn forward(
        &self,
        pixels: &Tensor,
        grid_h: usize,
        grid_w: usize,
        req: &TowerRequest,
    ) -> crate::Result<TowerOutput> {
        let m = self.cfg.spatial_merge_size;
        let group = m * m;
        let (hm, wm) = (grid_h / m, grid_w / m);
        let (window_index, bounds) = window_index(hm, wm, self.cfg.window_side(), m);
        let dev = pixels.device();
        // Patch row p of merged token t lands at 4·k + (p mod 4), k = t's place in window order.
        let rows: Vec<u32> =
            window_index.iter().flat_map(|&t| (0..group).map(move |j| (t * group + j) as u32)).collect();
        let rows = Tensor::new(rows.as_slice(), dev)?;
        let mut x = self.patch_embed(pixels)?.index_select(&rows, 0)?;
        let (cos, sin) = self.rope(grid_h, grid_w, x.dtype(), dev)?;
        let (cos, sin) = (cos.index_select(&rows, 0)?, sin.index_select(&rows, 0)?);
        let windows: Vec<(usize, usize)> = bounds.windows(2).map(|b| (b[0], b[1])).filter(|(a, b)| b > a).collect();
        let whole = [(0, grid_h * grid_w)];
        let mut out = TowerOutput {
            merged: Tensor::zeros(0, DType::F32, dev)?,
            blocks: BTreeMap::new(),
            mean: None,
            saliency: None,
            window_index: window_index.clone(),
        };
        let mut sum: Option<Tensor> = None;
        for (i, block) in self.blocks.iter().enumerate() {
            let segments: &[(usize, usize)] =
                if self.cfg.fullatt_block_indexes.contains(&i) { &whole } else { &windows };
            let chunk = req.probs_per_chunk.unwrap_or(PROBS_PER_CHUNK);
            let (next, sal) = block.forward(&x, &cos, &sin, segments, req.saliency_block == Some(i), chunk)?;
            x = next;
            if sal.is_some() {
                out.saliency = sal;
            }
            if req.block_outputs.contains(&i) {
                out.blocks.insert(i, x.clone());
            }
            if let Some(range) = req.mean_of.as_ref().filter(|r| r.contains(&i)) {
                let xf = x.to_dtype(DType::F32)?;
                sum = Some(match sum {
                    None => xf,
                    Some(s) => (s + xf)?,
                });
                if i == *range.end() {
                    out.mean = Some((sum.take().expect("summed above") / range.clone().count() as f64)?);
                }
            }
        }
        out.merged = self.merger.forward(&x)?;
        Ok(out)
    }
}

/// Undoes window order: row `k` of `window_rows` belongs to raster index `window_index[k]`.
pub fn to_raster(window_rows: &Tensor, window_index: &[usize]) -> candle_core::Result<Tensor> {
    let mut reverse = vec![0u32; window_index.len()];
    for (k, &r) in window_index.iter().enumerate() {
        reverse[r] = k as u32;
    }
    window_rows.index_select(&Tensor::new(reverse.as_slice(), window_rows.device())?, 0)
}

/// Per-token means of `per_row` over each group of `group` consecutive rows.
pub fn group_mean(per_row: &[f32], group: usize) -> Vec<f32> {
    per_row.chunks(group).map(|c| c.iter().sum::<f32>() / c.len() as f32).collect()
}
