//! Dense weights packed once at load for our own CPU matrix kernels: `C = A·Wᵀ (+ b)` for any number
//! of rows, prefill (hundreds to thousands of rows) and decode (one) alike.
//!
//! `W` (n outputs × k inputs) is stored as panels of [`NR`] outputs: panel `p` holds, for every input
//! `j`, the 32 weights of outputs `32p … 32p+31` side by side, so a kernel reads each panel front to
//! back with aligned vector loads. f32 and f16 panels hold one input per row; bf16 panels hold two
//! (an input pair per 32-bit lane), the operand layout of AVX-512 BF16's pairwise dot product.
//! The rows of `A` are packed per call into blocks of [`MR`] rows the same way. Outputs are computed
//! in f32; each `MR × NR` tile of `C` lives in registers for [`KC`] inputs at a time.

use half::{bf16, f16};

mod quant;
pub use quant::fits as quantized_fits;

/// Outputs per panel: two 16-lane vectors.
pub const NR: usize = 32;
/// Rows of `A` per register tile (MR × 2 accumulators + 2 loaded weight vectors fit in 32 registers).
const MR: usize = 14;
/// Inputs per pass over a tile: the tile's row block (14 × 256 f32) stays in L1.
const KC: usize = 256;
/// Panels visited per pass over the row blocks: 8 × 32 × 256 f32 = 256 KiB of weights stay in L2.
const NC_PANELS: usize = 8;
/// Chunks of output panels per thread in a product (see [`Packed::matmul`]).
const CHUNKS_PER_THREAD: usize = 4;

/// One 64-byte line: the unit of every packed buffer, so vector loads are aligned.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// The input counts a product of `format` panels is fastest at multiples of: 32 where AMX multiplies
/// bf16 (it takes whole 32-input blocks; other counts run on the vector kernels), else 1.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub fn input_multiple(format: Format) -> usize {
    #[cfg(target_arch = "x86_64")]
    if format == Format::Bf16Pairs && amx::available() {
        return amx::INPUTS;
    }
    1
}

/// A weight matrix packed for [`Packed::matmul`].
pub struct Packed {
    n: usize,
    k: usize,
    format: Format,
    /// 32-bit words per panel (a whole number of lines).
    panel_words: usize,
    lines: Lines,
}

/// Zeroed lines. Large buffers are their own anonymous mapping advised onto 2 MiB pages (Linux's
/// transparent huge pages): a weight streams past the TLB and the prefetchers 2 MiB at a time, which
/// measurably speeds up decoding, where every weight is read once per token.
struct Lines {
    ptr: std::ptr::NonNull<Line>,
    len: usize,
    mapped: bool,
}

// SAFETY: an owned buffer of plain words.
unsafe impl Send for Lines {}
unsafe impl Sync for Lines {}

impl Lines {
    fn zeroed(len: usize) -> Self {
        #[cfg(target_os = "linux")]
        if len * 64 >= 2 << 20 {
            // SAFETY: a fresh private anonymous mapping of exactly `len` lines (zeroed by the kernel).
            unsafe {
                let bytes = len * 64;
                let prot = libc::PROT_READ | libc::PROT_WRITE;
                let p = libc::mmap(std::ptr::null_mut(), bytes, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
                if p != libc::MAP_FAILED {
                    // Advice only: without huge pages the mapping works the same.
                    libc::madvise(p, bytes, libc::MADV_HUGEPAGE);
                    let ptr = std::ptr::NonNull::new(p.cast()).expect("mmap succeeded");
                    return Self { ptr, len, mapped: true };
                }
            }
        }
        let boxed: Box<[Line]> = vec![Line::default(); len].into_boxed_slice();
        let ptr = std::ptr::NonNull::new(Box::into_raw(boxed).cast::<Line>()).expect("a box is not null");
        Self { ptr, len, mapped: false }
    }

    fn as_ptr(&self) -> *const Line {
        self.ptr.as_ptr()
    }

    fn as_mut_slice(&mut self) -> &mut [Line] {
        // SAFETY: `len` initialised lines owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        // SAFETY: releases what `zeroed` made, the way it was made.
        unsafe {
            if self.mapped {
                #[cfg(target_os = "linux")]
                libc::munmap(self.ptr.as_ptr().cast(), self.len * 64);
            } else {
                drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len)));
            }
        }
    }
}

/// How the panels store a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    F32,
    /// Input pairs: a 32-bit lane holds the weights of inputs `2j` (low half) and `2j + 1`. A panel is
    /// two halves of 16 outputs each, one after the other, so an AMX tile of 16 pairs × 16 outputs is
    /// one contiguous KiB.
    Bf16Pairs,
    F16,
    /// llama.cpp's 8-bit blocks of 32 (see [`quant`]).
    Q8_0,
    /// llama.cpp's 4-bit k-quant super-blocks of 256 (see [`quant`]).
    Q4K,
}

/// Rows of `A`, row-major, in the activations' dtype.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

impl<'a> Rows<'a> {
    /// `storage[range]` when its dtype is one the kernels read.
    pub fn of(storage: &'a candle_core::CpuStorage, range: std::ops::Range<usize>) -> Option<Self> {
        use candle_core::CpuStorage;
        match storage {
            CpuStorage::F32(v) => Some(Rows::F32(&v[range])),
            CpuStorage::BF16(v) => Some(Rows::Bf16(&v[range])),
            CpuStorage::F16(v) => Some(Rows::F16(&v[range])),
            _ => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            Rows::F32(v) => v.len(),
            Rows::Bf16(v) => v.len(),
            Rows::F16(v) => v.len(),
        }
    }
}

impl Format {
    /// 32-bit words per panel row (per input, or per input pair for bf16).
    fn words_per_step(self) -> usize {
        match self {
            // Quantised panels are read as f32 rows once dequantised.
            Format::F32 | Format::Bf16Pairs | Format::Q8_0 | Format::Q4K => NR,
            Format::F16 => NR / 2,
        }
    }

    /// Steps of the inner loop for `k` inputs.
    fn steps(self, k: usize) -> usize {
        match self {
            Format::Bf16Pairs => k.div_ceil(2),
            _ => k,
        }
    }

    fn is_quantized(self) -> bool {
        matches!(self, Format::Q8_0 | Format::Q4K)
    }
}

impl Packed {
    /// Packs the row-major `n × k` weight `w` (`w.len() == n·k`) in `format`.
    /// Quantised formats need `k` to fill their blocks ([`quantized_fits`]).
    pub fn new(w: Rows<'_>, n: usize, k: usize, format: Format) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n}×{k} has {} values", w.len());
        if format.is_quantized() {
            fn widened<T: Copy + Into<f32> + Sync>(v: &[T]) -> Vec<f32> {
                use rayon::prelude::*;
                v.par_iter().map(|&x| x.into()).collect()
            }
            return match w {
                Rows::F32(v) => Self::quantize(v, n, k, format),
                Rows::Bf16(v) => Self::quantize(&widened(v), n, k, format),
                Rows::F16(v) => Self::quantize(&widened(v), n, k, format),
            };
        }
        if format == Format::Bf16Pairs {
            return Self::pack_pairs(w, n, k);
        }
        // The word each format stores (f32 panels take the whole 32 bits of the value).
        fn word<T: Copy>(format: Format, f32_of: impl Fn(T) -> f32) -> impl Fn(T) -> u32 {
            move |v| match format {
                Format::F32 => f32_of(v).to_bits(),
                Format::F16 => u32::from(f16::from_f32(f32_of(v)).to_bits()),
                Format::Bf16Pairs | Format::Q8_0 | Format::Q4K => unreachable!("packed above"),
            }
        }
        match w {
            Rows::F32(v) => Self::pack(v, n, k, format, word(format, |x: f32| x)),
            Rows::Bf16(v) => Self::pack(v, n, k, format, word(format, bf16::to_f32)),
            Rows::F16(v) if format == Format::F16 => Self::pack(v, n, k, format, |x: f16| u32::from(x.to_bits())),
            Rows::F16(v) => Self::pack(v, n, k, format, word(format, f16::to_f32)),
        }
    }

    /// Packs, in f32 or bf16 pairs, the weight whose transpose `wt` (`k × n`, row-major) is given: a
    /// panel's inputs are `wt`'s rows, read in order (no transposed copy is made).
    pub fn transposed(wt: &[f32], k: usize, n: usize, format: Format) -> Self {
        assert_eq!(wt.len(), n * k, "transposed weight of {k}×{n} has {} values", wt.len());
        let pairs = format == Format::Bf16Pairs;
        assert!(pairs || format == Format::F32, "transposed packing is f32 or bf16 pairs, not {format:?}");
        let words_per_panel = format.steps(k) * NR;
        let lines_per_panel = words_per_panel.div_ceil(16);
        let mut lines = Lines::zeroed(n.div_ceil(NR) * lines_per_panel);
        for (p, dst) in lines.as_mut_slice().chunks_mut(lines_per_panel.max(1)).enumerate() {
            // SAFETY: `Line` is 16 plain u32s; the slice covers exactly the panel's lines.
            let words = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u32>(), dst.len() * 16) };
            let cols = (n - p * NR).min(NR);
            let row = |j: usize| &wt[j * n + p * NR..j * n + p * NR + cols];
            if pairs {
                let half = words_per_panel / 2;
                for j in (0..k).step_by(2) {
                    let (lo, hi) = (row(j), (j + 1 < k).then(|| row(j + 1)));
                    for c0 in (0..cols).step_by(16) {
                        let c1 = (c0 + 16).min(cols);
                        let out = &mut words[(c0 / 16) * half + (j / 2) * 16..][..c1 - c0];
                        pair_words(&lo[c0..c1], hi.map(|h| &h[c0..c1]), out);
                    }
                }
            } else {
                for (j, out) in words.chunks_exact_mut(NR).enumerate() {
                    out.iter_mut().zip(row(j)).for_each(|(o, v)| *o = v.to_bits());
                }
            }
        }
        Self { n, k, format, panel_words: lines_per_panel * 16, lines }
    }

    /// Packs `w` with `bits` giving each value's stored word (see [`Packed::new`]).
    fn pack<T: Copy + Sync>(w: &[T], n: usize, k: usize, format: Format, bits: impl Fn(T) -> u32 + Sync) -> Self {
        let panels = n.div_ceil(NR);
        let words_per_panel = format.steps(k) * format.words_per_step();
        let lines_per_panel = words_per_panel.div_ceil(16);
        let mut lines = Lines::zeroed(panels * lines_per_panel);
        let pack_panel = |(p, dst): (usize, &mut [Line])| {
            // SAFETY: `Line` is 16 plain u32s; the slice covers exactly the panel's lines.
            let words = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u32>(), dst.len() * 16) };
            let cols = (n - p * NR).min(NR);
            for c in 0..cols {
                let row = &w[(p * NR + c) * k..(p * NR + c + 1) * k];
                match format {
                    Format::F32 => row.iter().enumerate().for_each(|(j, &v)| words[j * NR + c] = bits(v)),
                    Format::F16 => row.iter().enumerate().for_each(|(j, &v)| {
                        words[j * (NR / 2) + c / 2] |= bits(v) << (16 * (c % 2));
                    }),
                    Format::Bf16Pairs | Format::Q8_0 | Format::Q4K => unreachable!("see `pack_pairs`, `quant`"),
                }
            }
        };
        use rayon::prelude::*;
        lines.as_mut_slice().par_chunks_mut(lines_per_panel.max(1)).enumerate().for_each(pack_panel);
        Self { n, k, format, panel_words: lines_per_panel * 16, lines }
    }

    /// Packs `w` as bf16 pairs: each panel's rows converted to pair words (vectorised), then laid out
    /// as the panel's two 16-output halves.
    fn pack_pairs(w: Rows<'_>, n: usize, k: usize) -> Self {
        let pairs = k.div_ceil(2);
        let half = pairs * 16;
        let lines_per_panel = (2 * half).div_ceil(16);
        let mut lines = Lines::zeroed(n.div_ceil(NR) * lines_per_panel);
        let pack_panel = |(p, dst): (usize, &mut [Line])| {
            // SAFETY: `Line` is 16 plain u32s; the slice covers exactly the panel's lines.
            let words = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u32>(), dst.len() * 16) };
            let mut row = vec![0u32; pairs];
            for c in 0..(n - p * NR).min(NR) {
                convert_row(w, p * NR + c, k, &mut row, true);
                let out = &mut words[(c / 16) * half + c % 16..];
                row.iter().enumerate().for_each(|(j, &v)| out[j * 16] = v);
            }
        };
        use rayon::prelude::*;
        lines.as_mut_slice().par_chunks_mut(lines_per_panel.max(1)).enumerate().for_each(pack_panel);
        Self { n, k, format: Format::Bf16Pairs, panel_words: lines_per_panel * 16, lines }
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held by the panels.
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64
    }

    /// `c[m × n] = a[m × k] · Wᵀ (+ bias)`, output panels split over `threads`.
    pub fn matmul(&self, a: Rows<'_>, m: usize, bias: Option<&[f32]>, c: &mut [f32], threads: usize) {
        self.matmul_on(Kernel::for_format(self.format), a, m, bias, c, threads);
    }

    fn matmul_on(&self, kernel: Kernel, a: Rows<'_>, m: usize, bias: Option<&[f32]>, c: &mut [f32], threads: usize) {
        let (n, k) = (self.n, self.k);
        assert_eq!(a.len(), m * k, "{m} rows of {k} inputs");
        assert_eq!(c.len(), m * n, "{m} rows of {n} outputs");
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "bias of {n} outputs");
        }
        if m == 0 || n == 0 {
            return;
        }
        let a = RowWords::new(a, k, kernel.a_format());
        let panels = n.div_ceil(NR);
        let threads = threads.clamp(1, panels);
        // Threads take chunks of panels as they finish the last, a few chunks each: on a shared host
        // one core often runs slower than the other (or wakes late), and a fixed half per thread would
        // make every product wait for the slower one.
        let per_chunk = panels.div_ceil(threads * CHUNKS_PER_THREAD).max(NC_PANELS.min(panels));
        let chunks = panels.div_ceil(per_chunk);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let out = SendPtr(c.as_mut_ptr());
        #[cfg(target_arch = "x86_64")]
        // Every row goes to AMX when it is used, the last block padded with zero rows: the vector
        // kernel would stream every weight again for a few leftover rows.
        let amx_rows = if amx::usable(kernel, k, m) { m } else { 0 };
        #[cfg(not(target_arch = "x86_64"))]
        let amx_rows = 0;
        #[cfg(target_arch = "x86_64")]
        let blocks = amx::pack_rows(&a, amx_rows);
        let vector_rows = PackedRows::new(&a, amx_rows..m);
        // One row on quantised panels runs on the quants, the row quantised once per product.
        #[cfg(target_arch = "x86_64")]
        let quantized_row = (self.format.is_quantized()
            && m == 1
            && matches!(kernel, Kernel::Avx512F32)
            && quant::avx512::has_vnni())
        .then(|| {
            // SAFETY: one row of `k` f32 words (the f32 kernel's rows); AVX-512 present (the kernel's
            // choice); `k` fills the format's blocks.
            unsafe { quant::avx512::RowQ8::new(std::slice::from_raw_parts(vector_rows.words.as_ptr().cast(), k)) }
        });
        let job = |_| loop {
            let chunk = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if chunk >= chunks {
                break;
            }
            let range = chunk * per_chunk..((chunk + 1) * per_chunk).min(panels);
            // SAFETY: each chunk is taken once, so threads write disjoint output columns; every
            // pointer stays inside its buffer (see `tile`).
            #[cfg(target_arch = "x86_64")]
            if amx_rows > 0 {
                unsafe { self.amx_columns(&blocks, a.lda, m, range.clone(), bias, out) };
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(x) = &quantized_row {
                for p in range {
                    // SAFETY: panel `p`'s output columns lie inside the single row; the CPU has
                    // AVX-512 VNNI (checked above).
                    unsafe {
                        let y = out.0.add(p * NR);
                        let bias = bias.map(|b| b.as_ptr().add(p * NR));
                        quant::avx512::row(self, p, x, y, (n - p * NR).min(NR), bias);
                    }
                }
                continue;
            }
            unsafe { self.columns(kernel, &vector_rows, amx_rows..m, range, bias, out) };
        };
        if threads == 1 || chunks == 1 {
            job(0);
        } else {
            use rayon::prelude::*;
            (0..threads).into_par_iter().for_each(job);
        }
    }

    /// The output panels `panels` of the rows `rows`.
    unsafe fn columns(
        &self,
        kernel: Kernel,
        a: &PackedRows,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        c: SendPtr,
    ) {
        let quantized = self.format.is_quantized();
        let steps = self.format.steps(self.k);
        let b = self.lines.as_ptr().cast::<u32>();
        let panel_words = self.panel_words;
        // Per step, per half for bf16 pairs.
        let step_words = match self.format {
            Format::Bf16Pairs => 16,
            _ => self.format.words_per_step(),
        };
        // One row block (decoding) reuses no weights: each panel is streamed once, front to back.
        // Quantised panels are dequantised a pass at a time, whatever the rows.
        let kc = if rows.len() <= MR && !quantized { steps.max(1) } else { KC };
        let mut dequantized = vec![Line::default(); if quantized { NC_PANELS * KC * NR / 16 } else { 0 }];
        let mut nc = panels.start;
        while nc < panels.end {
            let nc_end = (nc + NC_PANELS).min(panels.end);
            let mut s0 = 0;
            while s0 < steps {
                let ks = (steps - s0).min(kc);
                // SAFETY: `Line` is 16 plain f32-sized words.
                let scratch = unsafe {
                    std::slice::from_raw_parts_mut(dequantized.as_mut_ptr().cast::<f32>(), dequantized.len() * 16)
                };
                if quantized {
                    for p in nc..nc_end {
                        let out = &mut scratch[(p - nc) * ks * NR..(p - nc + 1) * ks * NR];
                        match kernel {
                            // SAFETY: the kernel was chosen for a CPU with AVX-512F.
                            #[cfg(target_arch = "x86_64")]
                            Kernel::Avx512F32 => unsafe { quant::avx512::dequantize(self, p, s0, ks, out) },
                            _ => quant::dequantize(self, p, s0, ks, out),
                        }
                    }
                }
                for r0 in rows.clone().step_by(MR) {
                    let tile_rows = (rows.end - r0).min(MR);
                    let a_block = unsafe { a.words.as_ptr().add((r0 - rows.start) * a.steps + s0 * tile_rows) };
                    for p in nc..nc_end {
                        let cols = (self.n - p * NR).min(NR);
                        let init = if s0 > 0 {
                            Init::Accumulate
                        } else if let Some(bias) = bias {
                            Init::Bias(unsafe { bias.as_ptr().add(p * NR) })
                        } else {
                            Init::Zero
                        };
                        let (b, b_hi) = if quantized {
                            let at = unsafe { scratch.as_ptr().add((p - nc) * ks * NR).cast::<u32>() };
                            (at, at)
                        } else {
                            unsafe {
                                (
                                    b.add(p * panel_words + s0 * step_words),
                                    b.add(p * panel_words + panel_words / 2 + s0 * step_words),
                                )
                            }
                        };
                        let tile = Tile {
                            steps: ks,
                            a: a_block,
                            b,
                            b_hi,
                            c: unsafe { c.0.add(r0 * self.n + p * NR) },
                            ldc: self.n,
                            init,
                            cols,
                        };
                        unsafe { kernel.run(tile_rows, &tile) };
                    }
                }
                s0 += ks;
            }
            nc = nc_end;
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Packed {
    /// The `rows` rows of the output panels `panels` on AMX tiles, from `blocks` (the rows packed by
    /// [`amx::pack_rows`], the last block zero-padded): bf16 pairs in, f32 out, the whole input width
    /// per tile.
    unsafe fn amx_columns(
        &self,
        blocks: &[u32],
        lda: usize,
        rows: usize,
        panels: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        c: SendPtr,
    ) {
        let b = self.lines.as_ptr().cast::<u8>();
        let pairs = self.k / 2;
        let block_words = lda * amx::ROWS;
        // A tile that would overhang the output (the padded last block, the narrow last panel)
        // lands here first and only its live part is copied out.
        let mut spill = [0f32; amx::ROWS * NR];
        unsafe {
            amx::configure();
            for nc in panels.clone().step_by(amx::PANELS_PER_PASS) {
                for (block, a) in blocks.chunks_exact(block_words).enumerate() {
                    let live_rows = (rows - block * amx::ROWS).min(amx::ROWS);
                    for p in nc..(nc + amx::PANELS_PER_PASS).min(panels.end) {
                        let panel = b.add(p * self.panel_words * 4);
                        let panel_hi = panel.add(self.panel_words * 2);
                        let cols = (self.n - p * NR).min(NR);
                        let at = c.0.add(block * amx::ROWS * self.n + p * NR);
                        if live_rows == amx::ROWS && cols == NR {
                            amx::tile(a.as_ptr().cast(), panel, panel_hi, pairs, at, self.n * 4);
                        } else {
                            amx::tile(a.as_ptr().cast(), panel, panel_hi, pairs, spill.as_mut_ptr(), NR * 4);
                            for r in 0..live_rows {
                                std::ptr::copy_nonoverlapping(spill.as_ptr().add(r * NR), at.add(r * self.n), cols);
                            }
                        }
                    }
                }
            }
            amx::release();
        }
        if let Some(bias) = bias {
            for p in panels {
                let cols = (self.n - p * NR).min(NR);
                for r in 0..rows {
                    // SAFETY: row `r`, columns of panel `p`: inside `c`, written by this thread only.
                    let y = unsafe { std::slice::from_raw_parts_mut(c.0.add(r * self.n + p * NR), cols) };
                    y.iter_mut().zip(&bias[p * NR..]).for_each(|(y, b)| *y += b);
                }
            }
        }
    }
}
impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({}×{}, {:?})", self.n, self.k, self.format)
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint output columns to the worker threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `A` as the kernels read it: rows of `lda` 32-bit words (f32 values or bf16 input pairs), each
/// borrowed where `a` already holds it so, converted row by row where the caller packs it.
struct RowWords<'a> {
    a: Rows<'a>,
    k: usize,
    lda: usize,
    pairs: bool,
}

impl<'a> RowWords<'a> {
    fn new(a: Rows<'a>, k: usize, format: Format) -> Self {
        let pairs = format == Format::Bf16Pairs;
        Self { a, k, lda: if pairs { k.div_ceil(2) } else { k }, pairs }
    }

    /// Whether the rows already are the kernel's words (read in place, no conversion).
    fn in_place(&self) -> bool {
        match self.a {
            Rows::F32(_) => !self.pairs,
            Rows::Bf16(_) => self.pairs && self.k.is_multiple_of(2),
            Rows::F16(_) => false,
        }
    }

    /// A buffer for [`RowWords::row`]: one row's words, or nothing when rows are read in place.
    fn scratch(&self) -> Vec<u32> {
        vec![0; if self.in_place() { 0 } else { self.lda }]
    }

    /// Row `r`'s words: in place when the rows already are them, else converted into `scratch`.
    fn row<'s>(&'s self, r: usize, scratch: &'s mut [u32]) -> &'s [u32] {
        let at = r * self.k..(r + 1) * self.k;
        // SAFETY (both casts): f32 and pairs of bf16 are plain 32-bit words.
        match self.a {
            Rows::F32(v) if self.in_place() => unsafe { std::slice::from_raw_parts(v[at].as_ptr().cast(), self.lda) },
            Rows::Bf16(v) if self.in_place() => unsafe { std::slice::from_raw_parts(v[at].as_ptr().cast(), self.lda) },
            _ => {
                let out = &mut scratch[..self.lda];
                convert_row(self.a, r, self.k, out, self.pairs);
                out
            }
        }
    }

    /// One row's values as bf16 pairs (the last pair zero-padded when `row` is odd).
    fn bf16_pairs<T: Copy + Into<f32>>(row: &[T], out: &mut [u32]) {
        let bits = |v: T| u32::from(bf16::from_f32(v.into()).to_bits());
        let pairs = row.chunks_exact(2);
        let tail = pairs.remainder().first().map(|&v| bits(v));
        for (o, p) in out.iter_mut().zip(pairs) {
            *o = bits(p[0]) | (bits(p[1]) << 16);
        }
        if let Some(t) = tail {
            out[row.len() / 2] = t;
        }
    }

    fn f32_words<T: Copy + Into<f32>>(row: &[T], out: &mut [u32]) {
        out.iter_mut().zip(row).for_each(|(o, &v)| *o = v.into().to_bits());
    }
}

/// `out[c]` ← the bf16 pair of `lo[c]` (low half) and `hi[c]` (0 without `hi`), up to 16 values.
fn pair_words(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(hi) = hi.filter(|_| lo.len() == 16 && std::arch::is_x86_feature_detected!("avx512bf16")) {
        // SAFETY: 16 values in each slice and in `out`; the CPU has the features.
        return unsafe { avx512::pair_words(lo, hi, out) };
    }
    let bits = |v: f32| u32::from(bf16::from_f32(v).to_bits());
    for (c, (o, &l)) in out.iter_mut().zip(lo).enumerate() {
        *o = bits(l) | (hi.map_or(0, |h| bits(h[c])) << 16);
    }
}

/// Row `r` of `a` (`k` values a row) as `out`'s words: bf16 pairs when `pairs`, else f32.
fn convert_row(a: Rows<'_>, r: usize, k: usize, out: &mut [u32], pairs: bool) {
    fn row<T: Copy + Into<f32>>(row: &[T], out: &mut [u32], pairs: bool) {
        if pairs {
            RowWords::bf16_pairs(row, out)
        } else {
            RowWords::f32_words(row, out)
        }
    }
    let at = r * k..(r + 1) * k;
    match a {
        // SAFETY: the CPU has the features the conversion is compiled for.
        #[cfg(target_arch = "x86_64")]
        Rows::F32(v) if pairs && std::arch::is_x86_feature_detected!("avx512bf16") => unsafe {
            avx512::bf16_pairs(&v[at], out)
        },
        Rows::F32(v) => row(&v[at], out, pairs),
        Rows::Bf16(v) => row(&v[at], out, pairs),
        Rows::F16(v) => row(&v[at], out, pairs),
    }
}

/// Rows of `A` for the vector kernels: blocks of [`MR`] rows (fewer in the last), each holding its
/// rows' words step by step, side by side, so a tile reads them front to back. (Rows read in place,
/// a row apart, would all fall into the same few L1 sets at the usual power-of-two widths.)
struct PackedRows {
    words: Vec<u32>,
    steps: usize,
}

impl PackedRows {
    /// Rows `rows` of `a`, converted a row block at a time (no converted copy of the whole `A`).
    fn new(a: &RowWords, rows: std::ops::Range<usize>) -> Self {
        let steps = a.lda;
        let mut words = vec![0u32; rows.len() * steps];
        let pack = |(block, dst): (usize, &mut [u32])| {
            let n = dst.len() / steps.max(1);
            let mut scratch = a.scratch();
            for r in 0..n {
                let src = a.row(rows.start + block * MR + r, &mut scratch);
                for (s, &w) in src.iter().enumerate() {
                    dst[s * n + r] = w;
                }
            }
        };
        if words.len() >= 1 << 16 {
            use rayon::prelude::*;
            words.par_chunks_mut(MR * steps.max(1)).enumerate().for_each(pack);
        } else {
            words.chunks_mut(MR * steps.max(1)).enumerate().for_each(pack);
        }
        Self { words, steps }
    }
}

/// How a tile's accumulators start.
#[derive(Clone, Copy)]
enum Init {
    Zero,
    Bias(*const f32),
    /// From the tile's current values (a later pass over the inputs).
    Accumulate,
}

/// One register tile: `rows × cols` outputs over `steps` steps.
struct Tile {
    steps: usize,
    /// The tile's rows as [`PackedRows`] holds them, from its first step on.
    a: *const u32,
    /// The panel's words from the tile's first step on; `b_hi` the second 16 outputs' for bf16 pairs.
    b: *const u32,
    b_hi: *const u32,
    c: *mut f32,
    ldc: usize,
    init: Init,
    cols: usize,
}

#[derive(Clone, Copy, Debug)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512F32,
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    #[cfg(target_arch = "x86_64")]
    Avx512F16,
    Portable(Format),
}

impl Kernel {
    fn for_format(format: Format) -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            match format {
                Format::F32 => return Kernel::Avx512F32,
                Format::Bf16Pairs if std::arch::is_x86_feature_detected!("avx512bf16") => return Kernel::Avx512Bf16,
                Format::F16 => return Kernel::Avx512F16,
                // Tiles run on dequantised f32 rows (see `quant`).
                Format::Q8_0 | Format::Q4K => return Kernel::Avx512F32,
                Format::Bf16Pairs => {}
            }
        }
        Kernel::Portable(if format.is_quantized() { Format::F32 } else { format })
    }

    /// How `A`'s rows are packed for this kernel.
    fn a_format(self) -> Format {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => Format::Bf16Pairs,
            Kernel::Portable(Format::Bf16Pairs) => Format::Bf16Pairs,
            _ => Format::F32,
        }
    }

    unsafe fn run(self, rows: usize, t: &Tile) {
        macro_rules! by_rows {
            ($f:ident) => {
                match rows {
                    1 => $f::<1>(t),
                    2 => $f::<2>(t),
                    3 => $f::<3>(t),
                    4 => $f::<4>(t),
                    5 => $f::<5>(t),
                    6 => $f::<6>(t),
                    7 => $f::<7>(t),
                    8 => $f::<8>(t),
                    9 => $f::<9>(t),
                    10 => $f::<10>(t),
                    11 => $f::<11>(t),
                    12 => $f::<12>(t),
                    13 => $f::<13>(t),
                    14 => $f::<14>(t),
                    _ => unreachable!("a tile has 1..=MR rows"),
                }
            };
        }
        unsafe {
            match self {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512F32 => by_rows!(avx512_f32),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Bf16 => by_rows!(avx512_bf16),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512F16 => by_rows!(avx512_f16),
                Kernel::Portable(format) => portable(format, rows, t),
            }
        }
    }
}

/// Any CPU: the same tile in scalar order (the compiler vectorises the 32 columns).
unsafe fn portable(format: Format, rows: usize, t: &Tile) {
    let mut acc = [[0f32; NR]; MR];
    unsafe {
        for (r, acc) in acc.iter_mut().enumerate().take(rows) {
            for (c, v) in acc.iter_mut().enumerate().take(t.cols) {
                *v = match t.init {
                    Init::Zero => 0.0,
                    Init::Bias(b) => *b.add(c),
                    Init::Accumulate => *t.c.add(r * t.ldc + c),
                };
            }
        }
        for s in 0..t.steps {
            for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                let a = *t.a.add(s * rows + r);
                match format {
                    Format::F32 | Format::Q8_0 | Format::Q4K => {
                        let a = f32::from_bits(a);
                        let b = t.b.add(s * NR);
                        for (c, v) in acc.iter_mut().enumerate() {
                            *v += a * f32::from_bits(*b.add(c));
                        }
                    }
                    Format::Bf16Pairs => {
                        let (a0, a1) = (f32::from_bits(a << 16), f32::from_bits(a & 0xffff_0000));
                        for (c, v) in acc.iter_mut().enumerate() {
                            let w = if c < 16 { *t.b.add(s * 16 + c) } else { *t.b_hi.add(s * 16 + c - 16) };
                            *v += a0 * f32::from_bits(w << 16) + a1 * f32::from_bits(w & 0xffff_0000);
                        }
                    }
                    Format::F16 => {
                        let a = f32::from_bits(a);
                        let b = t.b.add(s * (NR / 2));
                        for (c, v) in acc.iter_mut().enumerate() {
                            let w = (*b.add(c / 2) >> (16 * (c % 2))) as u16;
                            *v += a * f16::from_bits(w).to_f32();
                        }
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            std::ptr::copy_nonoverlapping(acc.as_ptr(), t.c.add(r * t.ldc), t.cols);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Init, Tile, NR};
    use std::arch::x86_64::*;

    /// How far ahead of its reads a streaming row kernel prefetches each stream: the hardware
    /// prefetchers alone keep too few lines in flight to use the memory bandwidth (f16: +25 %).
    const AHEAD_BYTES: usize = 4096;

    /// The column masks of a tile's two vectors.
    #[inline(always)]
    fn masks(cols: usize) -> (__mmask16, __mmask16) {
        let m = |c: usize| if c >= 16 { 0xffff } else { ((1u32 << c) - 1) as u16 };
        (m(cols.min(16)), m(cols.saturating_sub(16)))
    }

    #[inline(always)]
    unsafe fn start<const R: usize>(t: &Tile) -> [[__m512; 2]; R] {
        let (m0, m1) = masks(t.cols);
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            match t.init {
                Init::Zero => {}
                Init::Bias(b) => {
                    let v = [_mm512_maskz_loadu_ps(m0, b), _mm512_maskz_loadu_ps(m1, b.add(16))];
                    acc = [v; R];
                }
                Init::Accumulate => {
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let c = t.c.add(r * t.ldc);
                        *acc = [_mm512_maskz_loadu_ps(m0, c), _mm512_maskz_loadu_ps(m1, c.add(16))];
                    }
                }
            }
            acc
        }
    }

    #[inline(always)]
    unsafe fn finish<const R: usize>(t: &Tile, acc: &[[__m512; 2]; R]) {
        let (m0, m1) = masks(t.cols);
        unsafe {
            for (r, acc) in acc.iter().enumerate() {
                let c = t.c.add(r * t.ldc);
                _mm512_mask_storeu_ps(c, m0, acc[0]);
                _mm512_mask_storeu_ps(c.add(16), m1, acc[1]);
            }
        }
    }

    /// One row (decoding) reuses no weight, so the tile is a stream over its panel. Its two halves
    /// stream side by side (one stream per core leaves memory bandwidth unused), two steps each with
    /// their own accumulators, enough multiplies in flight to cover their latency.
    #[inline(always)]
    unsafe fn row(t: &Tile, step: impl Fn(&mut [__m512; 2], usize)) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; 4];
            acc[0] = start::<1>(t)[0];
            let half = t.steps / 2;
            let pairs = half / 2 * 2;
            for s in (0..pairs).step_by(2) {
                step(&mut acc[0], s);
                step(&mut acc[1], half + s);
                step(&mut acc[2], s + 1);
                step(&mut acc[3], half + s + 1);
            }
            for s in (pairs..half).chain(half + pairs..t.steps) {
                step(&mut acc[0], s);
            }
            let sum =
                |i: usize| _mm512_add_ps(_mm512_add_ps(acc[0][i], acc[1][i]), _mm512_add_ps(acc[2][i], acc[3][i]));
            finish::<1>(t, &[[sum(0), sum(1)]]);
        }
    }

    /// `row` as bf16 pairs (`out[i]` = inputs 2i and 2i + 1, the last pair zero-padded when `row` is
    /// odd), rounded to nearest even 16 at a time (`vcvtneps2bf16`, which reads subnormals as zero).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_pairs(row: &[f32], out: &mut [u32]) {
        let chunks = row.chunks_exact(16);
        let tail = chunks.remainder();
        let whole = row.len() / 16;
        unsafe {
            for (i, c) in chunks.enumerate() {
                let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(c.as_ptr()));
                _mm256_storeu_si256(out.as_mut_ptr().add(8 * i).cast(), std::mem::transmute::<__m256bh, __m256i>(v));
            }
        }
        super::RowWords::bf16_pairs(tail, &mut out[8 * whole..]);
    }

    /// [`super::pair_words`] of 16 values: both rows rounded at once, then interleaved.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pair_words(lo: &[f32], hi: &[f32], out: &mut [u32]) {
        // Halfword e of the result: lo[e / 2] for even e, hi[e / 2] (at 16 + e / 2) for odd.
        const ORDER: [u16; 32] = {
            let mut order = [0u16; 32];
            let mut e = 0;
            while e < 32 {
                order[e] = (e / 2 + 16 * (e % 2)) as u16;
                e += 1;
            }
            order
        };
        unsafe {
            let both = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(hi.as_ptr()), _mm512_loadu_ps(lo.as_ptr()));
            let order = _mm512_loadu_si512(ORDER.as_ptr().cast());
            let words = _mm512_permutexvar_epi16(order, std::mem::transmute::<__m512bh, __m512i>(both));
            _mm512_storeu_si512(out.as_mut_ptr().cast(), words);
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn f32_tile<const R: usize>(t: &Tile) {
        unsafe {
            if R == 1 {
                let (a, b) = (t.a.cast::<f32>(), t.b.cast::<f32>());
                let d = AHEAD_BYTES / (NR * 4);
                return row(t, |acc, s| {
                    let x = _mm512_set1_ps(*a.add(s));
                    _mm_prefetch::<_MM_HINT_T1>(b.wrapping_add((s + d) * NR).cast());
                    _mm_prefetch::<_MM_HINT_T1>(b.wrapping_add((s + d) * NR + 16).cast());
                    acc[0] = _mm512_fmadd_ps(x, _mm512_load_ps(b.add(s * NR)), acc[0]);
                    acc[1] = _mm512_fmadd_ps(x, _mm512_load_ps(b.add(s * NR + 16)), acc[1]);
                });
            }
            let mut acc = start::<R>(t);
            let (mut a, mut b) = (t.a.cast::<f32>(), t.b.cast::<f32>());
            for _ in 0..t.steps {
                let w = [_mm512_load_ps(b), _mm512_load_ps(b.add(16))];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(r));
                    acc[0] = _mm512_fmadd_ps(x, w[0], acc[0]);
                    acc[1] = _mm512_fmadd_ps(x, w[1], acc[1]);
                }
                a = a.add(R);
                b = b.add(NR);
            }
            finish(t, &acc);
        }
    }

    /// Two inputs per step: `vdpbf16ps` multiplies bf16 pairs exactly and adds both products in f32.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_tile<const R: usize>(t: &Tile) {
        unsafe {
            if R == 1 {
                let (a, lo, hi) = (t.a, t.b, t.b_hi);
                let d = AHEAD_BYTES / 64;
                return row(t, |acc, s| {
                    _mm_prefetch::<_MM_HINT_T1>(lo.wrapping_add((s + d) * 16).cast());
                    _mm_prefetch::<_MM_HINT_T1>(hi.wrapping_add((s + d) * 16).cast());
                    let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.add(s) as i32));
                    let w = |b: *const u32| {
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(b.add(s * 16).cast()))
                    };
                    acc[0] = _mm512_dpbf16_ps(acc[0], x, w(lo));
                    acc[1] = _mm512_dpbf16_ps(acc[1], x, w(hi));
                });
            }
            let mut acc = start::<R>(t);
            let (mut a, mut b, mut b_hi) = (t.a, t.b, t.b_hi);
            for _ in 0..t.steps {
                let w: [__m512bh; 2] = [
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(b.cast())),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(b_hi.cast())),
                ];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.add(r) as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], x, w[0]);
                    acc[1] = _mm512_dpbf16_ps(acc[1], x, w[1]);
                }
                a = a.add(R);
                b = b.add(16);
                b_hi = b_hi.add(16);
            }
            finish(t, &acc);
        }
    }

    /// The 32 f16 weights of one step at `b` (a line), widened to f32 by two conversions that read
    /// memory themselves. The intrinsic compiles to a line load, a lane extract and two register
    /// conversions (its `{sae}` form takes no memory operand): two uops more per step of a loop that
    /// must keep up with memory.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn widened(b: *const u32) -> (__m512, __m512) {
        let (lo, hi): (__m512, __m512);
        // SAFETY: the caller hands a readable 64-byte line; the CPU has AVX-512F (the callers'
        // target feature).
        unsafe {
            std::arch::asm!(
                "vcvtph2ps {lo}, ymmword ptr [{b}]",
                "vcvtph2ps {hi}, ymmword ptr [{b} + 32]",
                b = in(reg) b,
                lo = out(zmm_reg) lo,
                hi = out(zmm_reg) hi,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        (lo, hi)
    }

    /// f16 weights widened to f32 as they are loaded (exact), f32 inputs.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn f16_tile<const R: usize>(t: &Tile) {
        unsafe {
            if R == 1 {
                let (a, b) = (t.a.cast::<f32>(), t.b);
                let d = AHEAD_BYTES / (NR * 2);
                return row(t, |acc, s| {
                    let x = _mm512_set1_ps(*a.add(s));
                    _mm_prefetch::<_MM_HINT_T1>(b.wrapping_add((s + d) * (NR / 2)).cast());
                    let (lo, hi) = widened(b.add(s * (NR / 2)));
                    acc[0] = _mm512_fmadd_ps(x, lo, acc[0]);
                    acc[1] = _mm512_fmadd_ps(x, hi, acc[1]);
                });
            }
            let mut acc = start::<R>(t);
            let (mut a, mut b) = (t.a.cast::<f32>(), t.b);
            for _ in 0..t.steps {
                let (lo, hi) = widened(b);
                let w = [lo, hi];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(r));
                    acc[0] = _mm512_fmadd_ps(x, w[0], acc[0]);
                    acc[1] = _mm512_fmadd_ps(x, w[1], acc[1]);
                }
                a = a.add(R);
                b = b.add(NR / 2);
            }
            finish(t, &acc);
        }
    }
}

/// Intel AMX: bf16 tile multiplies (`tdpbf16ps`), 32 × 32 outputs per call, through inline assembly
/// (Rust has no stable AMX intrinsics). Linux hands out the tile state only on request.
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::Kernel;
    use std::arch::asm;

    /// Output rows per call: two 16-row tiles.
    pub const ROWS: usize = 32;
    /// Panels per pass over the row blocks: at 4096 inputs their 1 MiB of weights stays in L2.
    pub const PANELS_PER_PASS: usize = 4;

    /// Inputs per tile step (16 pairs).
    pub const INPUTS: usize = 32;

    /// Whether this call runs on AMX: a bf16 kernel, whole tile rows, the inputs in whole 32-blocks.
    pub fn usable(kernel: Kernel, k: usize, m: usize) -> bool {
        matches!(kernel, Kernel::Avx512Bf16) && k.is_multiple_of(INPUTS) && m >= ROWS && available()
    }

    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            // CPUID.(7,0):EDX bit 24 = AMX-TILE, bit 22 = AMX-BF16.
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            if edx & (1 << 24) == 0 || edx & (1 << 22) == 0 || std::env::var_os("NUWA_NO_AMX").is_some() {
                return false;
            }
            // arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): 0 once the kernel grants the state.
            let ret: i64;
            // SAFETY: a syscall that only changes this process's permitted register state.
            unsafe {
                asm!("syscall", inlateout("rax") 158i64 => ret, in("rdi") 0x1023, in("rsi") 18,
                     lateout("rcx") _, lateout("r11") _, options(nostack));
            }
            ret == 0
        })
    }

    /// Tiles 0–3: the four 16 × 16 f32 outputs; 4–5: 16 rows × 32 bf16 of A; 6–7: 16 input pairs × 16
    /// outputs of a panel. Every tile is 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    pub unsafe fn configure() {
        let mut cfg = Config([0; 64]);
        cfg.0[0] = 1; // palette 1
        for t in 0..8 {
            cfg.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            cfg.0[48 + t] = 16;
        }
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack)) };
    }

    pub unsafe fn release() {
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// The first `rows` rows of `a` (bf16 pairs) in 32-row blocks, the last padded with zero rows, each
    /// 32 inputs of a block one contiguous 2 KiB piece: its upper 16 rows' 64 bytes, then its lower 16's.
    pub fn pack_rows(a: &super::RowWords, rows: usize) -> Vec<u32> {
        let lda = a.lda;
        let mut out = vec![0u32; rows.next_multiple_of(ROWS) * lda];
        let pack = |(block, dst): (usize, &mut [u32])| {
            let mut scratch = a.scratch();
            for r in 0..(rows - block * ROWS).min(ROWS) {
                let src = a.row(block * ROWS + r, &mut scratch);
                for (step, piece) in src.chunks_exact(16).enumerate() {
                    dst[step * 2 * 16 * 16 + r * 16..][..16].copy_from_slice(piece);
                }
            }
        };
        use rayon::prelude::*;
        out.par_chunks_mut(ROWS * lda).enumerate().for_each(pack);
        out
    }

    /// `c[32 × 32] = a · panel` over `pairs` input pairs, `a` packed by [`pack_rows`], `c`'s rows
    /// `c_stride` bytes apart.
    pub unsafe fn tile(
        a: *const u8,
        panel: *const u8,
        panel_hi: *const u8,
        pairs: usize,
        c: *mut f32,
        c_stride: usize,
    ) {
        unsafe {
            let lower = c.cast::<u8>().add(16 * c_stride);
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            let a_stride = 64usize;
            let a_lower = a.add(1024);
            for step in (0..pairs).step_by(16) {
                // 16 input pairs: 64 bytes of each A row; 1 KiB of each panel half.
                asm!(
                    "tileloadd tmm4, [{a} + {sa}]",
                    "tileloadd tmm5, [{al} + {sa}]",
                    "tileloadd tmm6, [{b} + {sb}]",
                    "tileloadd tmm7, [{b2} + {sb}]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a = in(reg) a.add(step * 128),
                    al = in(reg) a_lower.add(step * 128),
                    b = in(reg) panel.add(step * 64),
                    b2 = in(reg) panel_hi.add(step * 64),
                    sa = in(reg) a_stride,
                    sb = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c} + {sc}], tmm0",
                "tilestored [{c2} + {sc}], tmm1",
                "tilestored [{l} + {sc}], tmm2",
                "tilestored [{l2} + {sc}], tmm3",
                c = in(reg) c,
                c2 = in(reg) c.cast::<u8>().add(64),
                l = in(reg) lower,
                l2 = in(reg) lower.add(64),
                sc = in(reg) c_stride,
                options(nostack),
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
use avx512::{bf16_tile as avx512_bf16, f16_tile as avx512_f16, f32_tile as avx512_f32};

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// llama.cpp's rule for quantising an activation row for q8_0 (`quantize_row_q8_0`, f32 scales),
    /// one value at a time: per 32 inputs `d = amax / 127`, each input `round(v / d)·d`.
    #[cfg(target_arch = "x86_64")]
    fn q8_row(x: &[f32]) -> Vec<f32> {
        x.chunks_exact(32)
            .flat_map(|xs| {
                let d = xs.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                xs.iter().map(move |&v| f32::from((v * inv).round() as i8) * d)
            })
            .collect()
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_vector_row_quantiser_follows_the_rule_exactly() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        // Random blocks at several magnitudes, an all-zero block, and a block with amax 127 (d = 1)
        // whose other inputs are exact halves, which round away from zero.
        let mut x: Vec<f32> =
            values(32 * 40, 7).iter().enumerate().map(|(i, v)| v * 10f32.powi(i as i32 / 320 - 2)).collect();
        x.extend([0.0; 32]);
        x.extend((0..32).map(|i| if i == 5 { -127.0 } else { i as f32 - 15.5 }));
        // SAFETY: AVX-512F checked above; whole blocks.
        let got = unsafe { quant::avx512::RowQ8::new(&x) }.values();
        let want = q8_row(&x);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "input {i} ({}): {g} vs {w}", x[i]);
        }
        assert_eq!(got.len(), x.len());
    }

    /// What `format` holds of the row-major `n × k` weight `w`, through candle's own dequantisation
    /// for the quantised formats (so the panel layout is checked against ggml's blocks).
    fn held(w: &[f32], k: usize, format: Format) -> Vec<f32> {
        use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0, GgmlType};
        fn through<B: GgmlType>(row: &[f32]) -> Vec<f32> {
            let mut blocks = vec![B::zeros(); row.len() / B::BLCK_SIZE];
            B::from_float(row, &mut blocks);
            let mut out = vec![0f32; row.len()];
            B::to_float(&blocks, &mut out);
            out
        }
        match format {
            Format::F32 => w.to_vec(),
            Format::Bf16Pairs => w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
            Format::F16 => w.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
            Format::Q8_0 => w.chunks(k).flat_map(through::<BlockQ8_0>).collect(),
            Format::Q4K => w.chunks(k).flat_map(through::<BlockQ4K>).collect(),
        }
    }

    /// Every kernel this CPU has, and the portable one, agree with an f64 product of the values the
    /// format stores, over shapes with narrow panels, input tails, partial row tiles and passes, one
    /// row (decoding's own quantised kernels) and many.
    #[test]
    fn every_kernel_matches_the_reference_product() {
        let shapes = [
            (1, 1, 1),
            (1, 45, 37),
            (15, 70, 300),
            (29, 33, 513),
            (64, 40, 64),
            (70, 96, 128),
            (33, 64, 600),
            (1, 45, 512),
            (3, 70, 768),
            (20, 33, 1024),
            (45, 40, 96),
            (40, 70, 1088),
        ];
        for (m, n, k) in shapes {
            let (a, w, bias) = (values(m * k, 1), values(n * k, 2), values(n, 3));
            for format in [Format::F32, Format::Bf16Pairs, Format::F16, Format::Q8_0, Format::Q4K] {
                if format.is_quantized() && !quantized_fits(format, k) {
                    continue;
                }
                // bf16 kernels multiply bf16 rows; the others f32 rows.
                let a_held = if format == Format::Bf16Pairs { held(&a, k, format) } else { a.clone() };
                let w_held = held(&w, k, format);
                let mut want = vec![0f64; m * n];
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 =
                            (0..k).map(|l| f64::from(a_held[i * k + l]) * f64::from(w_held[j * k + l])).sum();
                        want[i * n + j] = dot + f64::from(bias[j]);
                    }
                }
                let packed = Packed::new(Rows::F32(&w), n, k, format);
                let mut kernels = vec![Kernel::Portable(format), Kernel::for_format(format)];
                kernels.dedup_by_key(|k| format!("{k:?}"));
                for kernel in kernels {
                    // Decoding's quantised kernels multiply the row quantised to 8 bits, as llama.cpp does.
                    #[cfg(target_arch = "x86_64")]
                    let want = if format.is_quantized()
                        && m == 1
                        && matches!(kernel, Kernel::Avx512F32)
                        && quant::avx512::has_vnni()
                    {
                        let x = q8_row(&a);
                        (0..n)
                            .map(|j| {
                                let dot: f64 = (0..k).map(|l| f64::from(x[l]) * f64::from(w_held[j * k + l])).sum();
                                dot + f64::from(bias[j])
                            })
                            .collect()
                    } else {
                        want.clone()
                    };
                    // bf16 rows are read in place when they already are pairs (even `k`), else converted.
                    let a_bf16: Vec<bf16> = a.iter().map(|&v| bf16::from_f32(v)).collect();
                    let mut inputs = vec![Rows::F32(&a)];
                    if format == Format::Bf16Pairs {
                        inputs.push(Rows::Bf16(&a_bf16));
                    }
                    for (input, threads) in inputs.iter().flat_map(|&a| [(a, 1), (a, 3)]) {
                        let mut c = vec![f32::NAN; m * n];
                        packed.matmul_on(kernel, input, m, Some(&bias), &mut c, threads);
                        for (i, (got, want)) in c.iter().zip(&want).enumerate() {
                            let bound = 1e-5 * (k as f64).sqrt() + 1e-6 * want.abs();
                            assert!(
                                (f64::from(*got) - want).abs() <= bound,
                                "{kernel:?} {m}×{n}×{k} threads {threads}, output {i}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Packing a weight from its transpose stores exactly what packing the weight does.
    #[test]
    fn transposed_packing_equals_packing_the_weight() {
        for (n, k) in [(1, 1), (16, 2), (45, 37), (64, 577), (70, 96)] {
            let wt = values(n * k, 4);
            let w: Vec<f32> = (0..n * k).map(|i| wt[(i % k) * n + i / k]).collect();
            for format in [Format::F32, Format::Bf16Pairs] {
                let (a, b) = (Packed::transposed(&wt, k, n, format), Packed::new(Rows::F32(&w), n, k, format));
                // SAFETY: the panels are `len` lines of 16 words.
                let words = |p: &Packed| {
                    unsafe { std::slice::from_raw_parts(p.lines.as_ptr().cast::<u32>(), p.lines.len() * 16) }.to_vec()
                };
                assert_eq!(words(&a), words(&b), "{format:?} {n}×{k}");
            }
        }
    }
}
