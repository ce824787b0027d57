//! LLaVA-NeXT's "anyres" geometry, as transformers computes it: the crop grid an image gets, how it is
//! resized and padded into that grid, and how the stitched patch grid is cut back to the image's aspect
//! ratio. Pure arithmetic on sizes; no pixels.

use crate::{Error, Result};

/// Which side of the stitched grid loses its padding rows or columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpadAxis {
    /// Padding was above and below: rows are removed.
    Rows,
    /// Padding was left and right: columns are removed.
    Cols,
}

/// Everything about one image's views and token grid that depends on its size alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anyres {
    /// The chosen pinpoint, (height, width) in pixels.
    pub best_hw: (u32, u32),
    /// Crops down and across.
    pub rows: usize,
    pub cols: usize,
    /// The image resized to fit the pinpoint, (height, width).
    pub resized_hw: (u32, u32),
    /// Black padding around it: top, bottom, left, right.
    pub pad: [u32; 4],
    /// The crops' patch grids side by side, (rows, cols) in patches.
    pub stitched_hw: (usize, usize),
    pub unpad_axis: UnpadAxis,
    /// The image's extent along that axis, in patches, before the symmetric cut.
    pub unpad_new_size: usize,
    /// Patches removed from each end along that axis.
    pub unpad_each_side: usize,
    /// The grid the local tokens keep, (H', W').
    pub unpadded_hw: (usize, usize),
}

/// The pinpoint (height, width) that keeps most of the image's resolution, wasting least on equal
/// resolution, the earlier one on a full tie.
pub fn best_resolution(width: u32, height: u32, pinpoints: &[[u32; 2]]) -> Option<(u32, u32)> {
    let (w, h) = (f64::from(width), f64::from(height));
    let mut best: Option<((u32, u32), u64, u64)> = None;
    for &[ph, pw] in pinpoints {
        let scale = (f64::from(pw) / w).min(f64::from(ph) / h);
        let (dw, dh) = ((w * scale) as u64, (h * scale) as u64);
        let effective = (dw * dh).min(u64::from(width) * u64::from(height));
        let wasted = u64::from(ph) * u64::from(pw) - effective;
        let better = best.is_none_or(|(_, e, wa)| effective > e || (effective == e && wasted < wa));
        if better {
            best = Some(((ph, pw), effective, wasted));
        }
    }
    best.map(|b| b.0)
}

/// The size (height, width) the image is resized to inside a `ph`×`pw` pinpoint, aspect ratio kept.
pub fn resized_size(width: u32, height: u32, ph: u32, pw: u32) -> (u32, u32) {
    let (sx, sy) = (f64::from(pw) / f64::from(width), f64::from(ph) / f64::from(height));
    if sx < sy {
        (((f64::from(height) * sx).ceil() as u32).min(ph), pw)
    } else {
        (ph, ((f64::from(width) * sy).ceil() as u32).min(pw))
    }
}

/// Python's `int(round(x, 7))` for the non-negative sizes here: a value a hair below an integer (from
/// the division) counts as that integer, anything else is truncated.
fn round7_trunc(x: f64) -> usize {
    ((x * 1e7).round() / 1e7).trunc() as usize
}

impl Anyres {
    /// The plan for a `width`×`height` image, `crop` pixels per view side and `patches` patches per view
    /// side (336 and 24 for CLIP ViT-L/14-336).
    pub fn plan(width: u32, height: u32, pinpoints: &[[u32; 2]], crop: u32, patches: usize) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::invalid("image", format!("has no pixels ({width}×{height})")));
        }
        let (ph, pw) = best_resolution(width, height, pinpoints)
            .ok_or_else(|| Error::invalid("image_grid_pinpoints", "is empty"))?;
        let resized_hw = resized_size(width, height, ph, pw);
        let (top, left) = ((ph - resized_hw.0) / 2, (pw - resized_hw.1) / 2);
        let pad = [top, ph - resized_hw.0 - top, left, pw - resized_hw.1 - left];
        let (rows, cols) = ((ph / crop) as usize, (pw / crop) as usize);
        let (ch, cw) = (patches * rows, patches * cols);
        let (w, h) = (f64::from(width), f64::from(height));
        let (unpad_axis, unpad_new_size, unpad_each_side, unpadded_hw) = if w / h > cw as f64 / ch as f64 {
            let new = round7_trunc(h * (cw as f64 / w));
            let p = ch.saturating_sub(new) / 2;
            (UnpadAxis::Rows, new, p, (ch - 2 * p, cw))
        } else {
            let new = round7_trunc(w * (ch as f64 / h));
            let p = cw.saturating_sub(new) / 2;
            (UnpadAxis::Cols, new, p, (ch, cw - 2 * p))
        };
        Ok(Self {
            best_hw: (ph, pw),
            rows,
            cols,
            resized_hw,
            pad,
            stitched_hw: (ch, cw),
            unpad_axis,
            unpad_new_size,
            unpad_each_side,
            unpadded_hw,
        })
    }

    /// Views the encoder sees: the base view and the crops.
    pub fn views(&self) -> usize {
        1 + self.rows * self.cols
    }

    /// Image tokens of the unpruned sequence with `base` tokens in the base view: the base view, then
    /// each row of the unpadded grid followed by a newline.
    pub fn num_image_tokens(&self, base: usize) -> usize {
        let (h, w) = self.unpadded_hw;
        base + h * (w + 1)
    }

    /// The stitched-grid index (row-major over `stitched_hw`) of unpadded local index `u`.
    pub fn stitched_index(&self, u: usize) -> usize {
        let (_, w) = self.unpadded_hw;
        let (row, col) = (u / w, u % w);
        let (row, col) = match self.unpad_axis {
            UnpadAxis::Rows => (row + self.unpad_each_side, col),
            UnpadAxis::Cols => (row, col + self.unpad_each_side),
        };
        row * self.stitched_hw.1 + col
    }

    /// Where the unpadded grid lies on the original `width`×`height` image, `[x0, y0, x1, y1]` in its
    /// pixels, for views of `crop` pixels and `patches` patches a side: the kept stitched rows or columns
    /// in the pinpoint's canvas, the padding taken off and the resize undone.
    pub fn unpadded_window(&self, width: u32, height: u32, crop: u32, patches: usize) -> [f64; 4] {
        let cell = f64::from(crop) / patches as f64;
        let (rows, cols) = self.unpadded_hw;
        let (r0, c0) = match self.unpad_axis {
            UnpadAxis::Rows => (self.unpad_each_side, 0),
            UnpadAxis::Cols => (0, self.unpad_each_side),
        };
        let sx = f64::from(width) / f64::from(self.resized_hw.1);
        let sy = f64::from(height) / f64::from(self.resized_hw.0);
        let x = |c: usize| (c as f64 * cell - f64::from(self.pad[2])) * sx;
        let y = |r: usize| (r as f64 * cell - f64::from(self.pad[0])) * sy;
        [x(c0), y(r0), x(c0 + cols), y(r0 + rows)]
    }

    /// Where stitched-grid patch (`row`, `col`) comes from: (crop index, patch index inside the crop).
    pub fn crop_patch(&self, row: usize, col: usize, patches: usize) -> (usize, usize) {
        let crop = (row / patches) * self.cols + col / patches;
        (crop, (row % patches) * patches + col % patches)
    }
}
