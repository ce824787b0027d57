//! llama.cpp's q8_0 and q4_k weights in 32-output panels, held once at their own size.
//!
//! The blocks are quantised by ggml's rules (candle's implementation) and only rearranged: a panel
//! holds, block after block of inputs, the scales of its 32 outputs and then their quants input by
//! input, so a kernel streams it front to back.
//! - q8_0, per 32 inputs (17 lines): the 32 f16 scales `d`, then per 4 inputs, per output, the 4
//!   quants plus 128 as bytes — the operand layout of AVX-512 VNNI's `vpdpbusd` (unsigned × signed
//!   bytes, four products summed per 32-bit lane).
//! - q4_k, per 256 inputs (74 lines): the 32 f16 `d`, the 32 f16 `dmin`, per 32-input sub-block the
//!   32 six-bit scales and the 32 six-bit mins as bytes, then per 8 inputs, per output, 4 bytes: inputs
//!   0–3's quants in their low nibbles, 4–7's in the high ones (two `vpdpbusd` operands once masked).
//!   A weight is `d·scale·q − dmin·min`.
//!
//! One row (decoding) runs on the quants directly, in integer dot products with the row quantised to
//! 8 bits per 32 inputs, as llama.cpp does; more rows dequantise [`super::KC`] inputs of the
//! panels at a time into f32 and run the f32 tiles on them, which costs a fraction of the product.

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0, GgmlType};
use half::f16;

use super::{Format, Line, Lines, Packed, NR};

/// Inputs per block and lines per block in a panel.
fn block(format: Format) -> (usize, usize) {
    match format {
        Format::Q8_0 => (32, 17),
        Format::Q4K => (256, 74),
        _ => unreachable!("{format:?} is not a quantised format"),
    }
}

/// Whether `k` inputs fill `format`'s blocks.
pub fn fits(format: Format, k: usize) -> bool {
    k.is_multiple_of(block(format).0)
}

/// Lines of one panel of `k` inputs.
fn panel_lines(format: Format, k: usize) -> usize {
    let (size, lines) = block(format);
    k / size * lines
}

/// ggml's blocks as the bytes llama.cpp stores (both block types are `repr(C)`, no padding).
fn bytes_of<T>(blocks: &[T]) -> &[u8] {
    // SAFETY: plain-data blocks viewed as their bytes.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), std::mem::size_of_val(blocks)) }
}

impl Packed {
    /// Quantises the row-major f32 weight `w` (`n × k`, `k` filling the format's blocks) into `format`.
    pub fn quantize(w: &[f32], n: usize, k: usize, format: Format) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n}×{k} has {} values", w.len());
        assert!(fits(format, k), "{k} inputs do not fill {format:?} blocks");
        let lines_per_panel = panel_lines(format, k);
        let mut lines = Lines::zeroed(n.div_ceil(NR) * lines_per_panel);
        let pack_panel = |(p, dst): (usize, &mut [Line])| {
            // SAFETY: `Line` is 64 plain bytes; the slice covers exactly the panel's lines.
            let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), dst.len() * 64) };
            for c in 0..(n - p * NR).min(NR) {
                let row = &w[(p * NR + c) * k..(p * NR + c + 1) * k];
                match format {
                    Format::Q8_0 => {
                        let mut blocks = vec![BlockQ8_0::zeros(); k / 32];
                        BlockQ8_0::from_float(row, &mut blocks);
                        for (b, src) in bytes_of(&blocks).chunks_exact(34).enumerate() {
                            place_q8_0(&mut bytes[b * 17 * 64..(b + 1) * 17 * 64], c, src);
                        }
                    }
                    Format::Q4K => {
                        let mut blocks = vec![BlockQ4K::zeros(); k / 256];
                        BlockQ4K::from_float(row, &mut blocks);
                        for (b, src) in bytes_of(&blocks).chunks_exact(144).enumerate() {
                            place_q4k(&mut bytes[b * 74 * 64..(b + 1) * 74 * 64], c, src);
                        }
                    }
                    _ => unreachable!("checked by `fits`"),
                }
            }
        };
        use rayon::prelude::*;
        lines.as_mut_slice().par_chunks_mut(lines_per_panel.max(1)).enumerate().for_each(pack_panel);
        Self { n, k, format, panel_words: lines_per_panel * 16, lines }
    }
}

/// Where input `j`'s quant of output `c` lies in a q8_0 panel block's quants.
fn q8_0_at(j: usize, c: usize) -> usize {
    j / 4 * 4 * NR + c * 4 + j % 4
}

/// Output `c`'s q8_0 block (`d: f16, qs: [i8; 32]`) into its panel block.
fn place_q8_0(dst: &mut [u8], c: usize, src: &[u8]) {
    dst[2 * c..2 * c + 2].copy_from_slice(&src[..2]);
    for (j, &q) in src[2..].iter().enumerate() {
        dst[64 + q8_0_at(j, c)] = (i16::from(q as i8) + 128) as u8;
    }
}

/// Output `c`'s q4_k super-block (`d, dmin: f16, scales: [u8; 12], qs: [u8; 128]`) into its panel block.
fn place_q4k(dst: &mut [u8], c: usize, src: &[u8]) {
    dst[2 * c..2 * c + 2].copy_from_slice(&src[..2]);
    dst[64 + 2 * c..64 + 2 * c + 2].copy_from_slice(&src[2..4]);
    let scales = &src[4..16];
    for s in 0..8 {
        // ggml's six-bit packing of eight scales and eight mins in 12 bytes.
        let (sc, m) = if s < 4 {
            (scales[s] & 63, scales[s + 4] & 63)
        } else {
            ((scales[s + 4] & 0x0f) | ((scales[s - 4] >> 6) << 4), (scales[s + 4] >> 4) | ((scales[s] >> 6) << 4))
        };
        dst[128 + s * 64 + c] = sc;
        dst[128 + s * 64 + 32 + c] = m;
    }
    let qs = &src[16..];
    let quants = &mut dst[10 * 64..];
    for j in 0..256 {
        // ggml: per 64 inputs, 32 bytes: inputs 0–31 in the low nibbles, 32–63 in the high ones.
        let byte = qs[j / 64 * 32 + j % 32];
        let q = if j % 64 < 32 { byte & 0x0f } else { byte >> 4 };
        let (at, shift) = q4k_at(j, c);
        quants[at] |= q << shift;
    }
}

/// Where input `j`'s quant of output `c` lies in a q4_k panel block's quants: byte and nibble shift.
fn q4k_at(j: usize, c: usize) -> (usize, u32) {
    (j / 8 * 4 * NR + c * 4 + j % 4, 4 * (j % 8 / 4) as u32)
}

fn f16_at(bytes: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()
}

/// Panel `p`'s weights for inputs `s0 .. s0 + ks` (whole blocks) as the f32 panel rows the tiles read:
/// `out[j·32 + c]` is output `c`'s weight for input `s0 + j`.
pub fn dequantize(w: &Packed, p: usize, s0: usize, ks: usize, out: &mut [f32]) {
    let (size, lines) = block(w.format);
    // SAFETY: the panel's lines, read only.
    let panel = unsafe {
        std::slice::from_raw_parts(w.lines.as_ptr().cast::<u8>().add(p * w.panel_words * 4), w.panel_words * 4)
    };
    for b in s0 / size..(s0 + ks) / size {
        let blk = &panel[b * lines * 64..(b + 1) * lines * 64];
        let out = &mut out[(b * size - s0) * NR..(b * size - s0 + size) * NR];
        match w.format {
            Format::Q8_0 => {
                let d: [f32; NR] = std::array::from_fn(|c| f16_at(blk, c));
                for (j, o) in out.chunks_exact_mut(NR).enumerate() {
                    for c in 0..NR {
                        o[c] = d[c] * (f32::from(blk[64 + q8_0_at(j, c)]) - 128.0);
                    }
                }
            }
            Format::Q4K => {
                let d: [f32; NR] = std::array::from_fn(|c| f16_at(blk, c));
                let dmin: [f32; NR] = std::array::from_fn(|c| f16_at(&blk[64..], c));
                for s in 0..8 {
                    let meta = &blk[128 + s * 64..];
                    let scale: [f32; NR] = std::array::from_fn(|c| d[c] * f32::from(meta[c]));
                    let min: [f32; NR] = std::array::from_fn(|c| dmin[c] * f32::from(meta[32 + c]));
                    for j in s * 32..s * 32 + 32 {
                        let o = &mut out[j * NR..][..NR];
                        for c in 0..NR {
                            let (at, shift) = q4k_at(j, c);
                            let v = (blk[10 * 64 + at] >> shift) & 0x0f;
                            o[c] = scale[c] * f32::from(v) - min[c];
                        }
                    }
                }
            }
            _ => unreachable!("a quantised panel"),
        }
    }
}

/// AVX-512: dequantisation for the tiles, and one row on the quants directly.
#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use super::{block, Packed, NR};
    use crate::models::gemm::Format;
    use std::arch::x86_64::*;

    /// [`super::dequantize`] with vectors: one 16-output half of one input per store.
    ///
    /// # Safety
    /// AVX-512F present; the arguments as [`super::dequantize`] takes them.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dequantize(w: &Packed, p: usize, s0: usize, ks: usize, out: &mut [f32]) {
        let (size, lines) = block(w.format);
        assert!(out.len() >= ks * NR, "room for {ks} inputs");
        unsafe {
            let panel = w.lines.as_ptr().cast::<u8>().add(p * w.panel_words * 4);
            let o = out.as_mut_ptr();
            let halves = |at: *const u8| {
                let v = _mm512_loadu_si512(at.cast());
                [_mm512_cvtph_ps(_mm512_castsi512_si256(v)), _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(v))]
            };
            let bytes_ps = |at: *const u8| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(at.cast())));
            for b in s0 / size..(s0 + ks) / size {
                let blk = panel.add(b * lines * 64);
                let o = o.add((b * size - s0) * NR);
                match w.format {
                    Format::Q8_0 => {
                        let d = halves(blk);
                        let (byte, offset) = (_mm512_set1_epi32(0xff), _mm512_set1_epi32(128));
                        for g in 0..8 {
                            for (h, &d) in d.iter().enumerate() {
                                // 16 outputs' four quants, one 32-bit lane each.
                                let q4 = _mm512_loadu_si512(blk.add(64 + g * 4 * NR + 64 * h).cast());
                                for i in 0..4 {
                                    let q = _mm512_and_si512(_mm512_srlv_epi32(q4, _mm512_set1_epi32(8 * i)), byte);
                                    let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, offset));
                                    _mm512_storeu_ps(o.add((4 * g + i as usize) * NR + 16 * h), _mm512_mul_ps(d, v));
                                }
                            }
                        }
                    }
                    Format::Q4K => {
                        let (d, dmin) = (halves(blk), halves(blk.add(64)));
                        let nibble = _mm512_set1_epi32(0x0f);
                        for sb in 0..8 {
                            let meta = blk.add(128 + sb * 64);
                            let scale = [0, 1].map(|h| _mm512_mul_ps(d[h], bytes_ps(meta.add(16 * h))));
                            let min = [0, 1].map(|h| _mm512_mul_ps(dmin[h], bytes_ps(meta.add(32 + 16 * h))));
                            for g in sb * 4..sb * 4 + 4 {
                                for h in 0..2 {
                                    // 16 outputs' quants of 8 inputs, one 32-bit lane each.
                                    let v = _mm512_loadu_si512(blk.add(640 + g * 4 * NR + 64 * h).cast());
                                    for i in 0..8 {
                                        let shift = _mm512_set1_epi32(8 * (i % 4) as i32 + 4 * (i / 4) as i32);
                                        let q = _mm512_and_si512(_mm512_srlv_epi32(v, shift), nibble);
                                        let w = _mm512_fmsub_ps(scale[h], _mm512_cvtepi32_ps(q), min[h]);
                                        _mm512_storeu_ps(o.add((8 * g + i) * NR + 16 * h), w);
                                    }
                                }
                            }
                        }
                    }
                    _ => unreachable!("a quantised panel"),
                }
            }
        }
    }

    /// One row quantised as llama.cpp quantises activations for q8_0: per 32 inputs a scale
    /// `amax / 127` and the inputs over it rounded to i8 — with, per block, the quants' sum (the
    /// weights' +128 offset multiplies it).
    pub struct RowQ8 {
        quants: Vec<i8>,
        scales: Vec<f32>,
        sums: Vec<i32>,
    }

    impl RowQ8 {
        /// # Safety
        /// AVX-512F present; `x.len()` a multiple of 32.
        #[target_feature(enable = "avx512f")]
        pub unsafe fn new(x: &[f32]) -> Self {
            let blocks = x.len() / 32;
            let (mut quants, mut scales, mut sums) = (vec![0i8; blocks * 32], vec![0f32; blocks], vec![0i32; blocks]);
            unsafe {
                let (half, one) = (_mm512_set1_ps(0.5), _mm512_set1_ps(1.0));
                let sign = _mm512_set1_epi32(i32::MIN);
                for b in 0..blocks {
                    let at = x.as_ptr().add(32 * b);
                    let v = [_mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16))];
                    // NaN is the first operand, so `max` passes over it, as `f32::max` does.
                    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
                    let d = amax / 127.0;
                    let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
                    let mut sum = _mm512_setzero_si512();
                    for (h, &v) in v.iter().enumerate() {
                        // Rounded half away from zero (`f32::round`), exactly: the truncated magnitude,
                        // one more where the dropped fraction (exact) is at least a half, the sign put back.
                        let y = _mm512_mul_ps(v, inv);
                        let magnitude = _mm512_abs_ps(y);
                        let whole = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(magnitude);
                        let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_sub_ps(magnitude, whole), half);
                        let rounded = _mm512_castps_si512(_mm512_mask_add_ps(whole, up, whole, one));
                        let signed = _mm512_or_si512(rounded, _mm512_and_si512(_mm512_castps_si512(y), sign));
                        let q = _mm512_cvttps_epi32(_mm512_castsi512_ps(signed));
                        sum = _mm512_add_epi32(sum, q);
                        _mm_storeu_si128(quants.as_mut_ptr().add(32 * b + 16 * h).cast(), _mm512_cvtsepi32_epi8(q));
                    }
                    scales[b] = d;
                    sums[b] = _mm512_reduce_add_epi32(sum);
                }
            }
            Self { quants, scales, sums }
        }

        /// The values the quantised row stands for (what the integer kernel multiplies).
        #[cfg(test)]
        pub fn values(&self) -> Vec<f32> {
            self.quants.iter().enumerate().map(|(i, &q)| f32::from(q) * self.scales[i / 32]).collect()
        }
    }

    /// `y[0 .. cols] = x · panel p (+ bias)` in integer dot products (AVX-512 VNNI's `vpdpbusd`, unsigned
    /// weight bytes × the row's signed bytes, four products per 32-bit lane), per 32-input block scaled
    /// once: q8_0 takes its +128 off with the row block's quant sum, q4_k its mins (as llama.cpp does).
    ///
    /// # Safety
    /// AVX-512F and AVX-512 VNNI present; `x` quantised from `w.k` values; `y` and `bias` hold `cols`
    /// values, `cols ≤ 32` the panel's outputs.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn row(w: &Packed, p: usize, x: &RowQ8, y: *mut f32, cols: usize, bias: Option<*const f32>) {
        let (size, lines) = block(w.format);
        let m = |c: usize| if c >= 16 { 0xffff } else { ((1u32 << c) - 1) as u16 };
        let (m0, m1) = (m(cols.min(16)), m(cols.saturating_sub(16)));
        unsafe {
            let panel = w.lines.as_ptr().cast::<u8>().add(p * w.panel_words * 4);
            let mut acc = match bias {
                Some(b) => [_mm512_maskz_loadu_ps(m0, b), _mm512_maskz_loadu_ps(m1, b.add(16))],
                None => [_mm512_setzero_ps(); 2],
            };
            let halves = |at: *const u8| {
                let v = _mm512_loadu_si512(at.cast());
                [_mm512_cvtph_ps(_mm512_castsi512_si256(v)), _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(v))]
            };
            let bytes_ps = |at: *const u8| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(at.cast())));
            // The row's four quants of inputs 4i … 4i+3, in every lane.
            let quads = x.quants.as_ptr().cast::<i32>();
            let xq = |i: usize| _mm512_set1_epi32(quads.add(i).read_unaligned());
            let blocks = w.k / size;
            let half = blocks.div_ceil(2);
            // The panel's two halves stream side by side (one stream per core leaves bandwidth unused),
            // in plain loops with the format matched outside them: an iterator adaptor here stayed a
            // call per block, spilling the accumulators around it.
            macro_rules! each_block {
                (|$b:ident, $blk:ident| $body:block) => {{
                    for i in 0..half {
                        for $b in [i, i + half] {
                            if $b < blocks {
                                let $blk = panel.add($b * lines * 64);
                                // Each stream's block after next: enough reads in flight for the bandwidth.
                                for line in 0..lines {
                                    _mm_prefetch::<_MM_HINT_T1>($blk.wrapping_add((4 * lines + line) * 64).cast());
                                }
                                $body
                            }
                        }
                    }
                }};
            }
            match w.format {
                Format::Q8_0 => each_block!(|b, blk| {
                    let d = halves(blk);
                    // Four chains of four: one chain's latency, not the loads, would bound the block.
                    let mut dots = [[_mm512_setzero_si512(); 2]; 2];
                    for g in 0..8 {
                        let xg = xq(b * 8 + g);
                        for (h, dot) in dots[g % 2].iter_mut().enumerate() {
                            let wq = _mm512_loadu_si512(blk.add(64 + g * 4 * NR + 64 * h).cast());
                            *dot = _mm512_dpbusd_epi32(*dot, wq, xg);
                        }
                    }
                    // Σ (q_w + 128)·q_x − 128·Σ q_x = Σ q_w·q_x, exact in i32.
                    let offset = _mm512_set1_epi32(128 * *x.sums.get_unchecked(b));
                    let dx = _mm512_set1_ps(*x.scales.get_unchecked(b));
                    for h in 0..2 {
                        let dot = _mm512_add_epi32(dots[0][h], dots[1][h]);
                        let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(dot, offset));
                        acc[h] = _mm512_fmadd_ps(exact, _mm512_mul_ps(d[h], dx), acc[h]);
                    }
                }),
                Format::Q4K => each_block!(|b, blk| {
                    let (d, dmin) = (halves(blk), halves(blk.add(64)));
                    let nibbles = _mm512_set1_epi8(0x0f);
                    for sb in 0..8 {
                        let meta = blk.add(128 + sb * 64);
                        let sub = b * 8 + sb;
                        let mut dots = [[_mm512_setzero_si512(); 2]; 2];
                        for g in 0..4 {
                            // Eight inputs: four in the low nibbles, the next four in the high ones.
                            let (x_lo, x_hi) = (xq(2 * (sub * 4 + g)), xq(2 * (sub * 4 + g) + 1));
                            for (h, dot) in dots[g % 2].iter_mut().enumerate() {
                                let v = _mm512_loadu_si512(blk.add(640 + (sb * 4 + g) * 4 * NR + 64 * h).cast());
                                let lo = _mm512_and_si512(v, nibbles);
                                let hi = _mm512_and_si512(_mm512_srli_epi32::<4>(v), nibbles);
                                *dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(*dot, lo, x_lo), hi, x_hi);
                            }
                        }
                        let dx = _mm512_set1_ps(*x.scales.get_unchecked(sub));
                        let qsum = _mm512_set1_ps(*x.scales.get_unchecked(sub) * *x.sums.get_unchecked(sub) as f32);
                        for h in 0..2 {
                            let dot = _mm512_add_epi32(dots[0][h], dots[1][h]);
                            let scale = _mm512_mul_ps(_mm512_mul_ps(d[h], bytes_ps(meta.add(16 * h))), dx);
                            let min = _mm512_mul_ps(dmin[h], bytes_ps(meta.add(32 + 16 * h)));
                            acc[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[h]);
                            acc[h] = _mm512_fnmadd_ps(qsum, min, acc[h]);
                        }
                    }
                }),
                _ => unreachable!("a quantised panel"),
            }
            _mm512_mask_storeu_ps(y, m0, acc[0]);
            _mm512_mask_storeu_ps(y.add(16), m1, acc[1]);
        }
    }

    /// Whether this CPU runs [`row`].
    pub fn has_vnni() -> bool {
        std::arch::is_x86_feature_detected!("avx512vnni")
    }
}
