//! Pictures of what pruning did: the model's patch grid mapped back onto the original image (its
//! own aspect ratio, the padding mapped away), each patch drawn by what happened to it, or the
//! [CLS] saliency as a heatmap; optionally a grounding box with its label; and a legend.
//!
//! Drawing rule (documented in the legend): the fill says the stage-1 role (pillar, collector,
//! plain kept, or darkened when dropped), with a thin edge in the same colour; a thick white
//! outline with a dark inner edge marks the tokens that also survive the stage-2 cut (each is a
//! pillar or a collector, and its fill still says which). Fills are blended with [`blend`] so the image stays visible.
//! Sizes (lines, text, legend) scale with the image; the output always has the input's size.

use crate::engine::{EncodedImage, VisionReport};
use crate::layout::{Slot, VisualLayout};
use crate::preprocess::{cell_rect, Geometry};
use crate::{Error, Result};
use ab_glyph::{Font, FontRef, PxScale};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_text_mut, text_size};
use imageproc::rect::Rect;
use std::path::Path;

/// Colours (Okabe–Ito where possible, so the fills stay apart for colour-blind readers).
pub mod palette {
    /// Stage-1 pillar fill (orange).
    pub const PILLAR: [u8; 3] = [230, 159, 0];
    /// Stage-1 collector fill (sky blue).
    pub const COLLECTOR: [u8; 3] = [86, 180, 233];
    /// Kept by a method without stage-1 roles (bluish green).
    pub const KEPT: [u8; 3] = [0, 158, 115];
    /// Dropped patches are blended towards this (darkened).
    pub const DROPPED: [u8; 3] = [0, 0, 0];
    /// Outline of a stage-2 survivor.
    pub const SURVIVOR: [u8; 3] = [255, 255, 255];
    /// Inner edge of a survivor's outline, so it reads on light images too.
    pub const SURVIVOR_EDGE: [u8; 3] = [0, 0, 0];
    /// Grounding box and its label tab (yellow), with a black halo.
    pub const BOX: [u8; 3] = [255, 221, 0];
    pub const BOX_HALO: [u8; 3] = [0, 0, 0];
    /// Patch grid lines.
    pub const GRID: [u8; 3] = [255, 255, 255];
    /// Legend background and text.
    pub const LEGEND_BG: [u8; 3] = [0, 0, 0];
    pub const LEGEND_TEXT: [u8; 3] = [255, 255, 255];
    /// Between panels.
    pub const GAP: [u8; 3] = [32, 32, 32];
}

/// Opacity of the pillar / collector / kept fills.
pub const FILL_ALPHA: f32 = 0.5;
/// How far dropped patches are blended towards [`palette::DROPPED`].
pub const DROP_ALPHA: f32 = 0.6;
/// Opacity of the heatmap colours.
pub const HEAT_ALPHA: f32 = 0.6;
const GRID_ALPHA: f32 = 0.22;
const LEGEND_ALPHA: f32 = 0.75;
/// Patches narrower than this (in output pixels) get no grid lines: the lines would hide them.
const GRID_MIN_PX: f64 = 8.0;
/// Smallest legible legend text; below it the legend is left out rather than drawn unreadable.
const MIN_FONT_PX: f32 = 8.0;

/// DejaVu Sans Bold (Bitstream Vera licence, see `assets/DejaVuSans-LICENSE.txt`), bundled so
/// overlays render the same on any machine.
const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans-Bold.ttf");

fn font() -> FontRef<'static> {
    FontRef::try_from_slice(FONT_BYTES).expect("the bundled DejaVu Sans Bold is a valid TrueType font")
}

/// `over` painted with opacity `alpha` on `under`, per channel, rounded to nearest.
pub fn blend(under: Rgb<u8>, over: [u8; 3], alpha: f32) -> Rgb<u8> {
    Rgb(std::array::from_fn(|c| (under[c] as f32 * (1.0 - alpha) + over[c] as f32 * alpha).round() as u8))
}

/// The heatmap colour for `t` in [0, 1] (matplotlib's *inferno*, interpolated between 9 stops):
/// near-black for the least salient patches, pale yellow for the most.
pub fn heat_colour(t: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 9] = [
        [0.0, 0.0, 4.0],
        [31.0, 12.0, 72.0],
        [85.0, 15.0, 109.0],
        [136.0, 34.0, 106.0],
        [186.0, 54.0, 85.0],
        [227.0, 89.0, 51.0],
        [249.0, 140.0, 10.0],
        [249.0, 201.0, 50.0],
        [252.0, 255.0, 164.0],
    ];
    let x = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    std::array::from_fn(|c| (STOPS[i][c] + (STOPS[i + 1][c] - STOPS[i][c]) * f).round() as u8)
}

/// What happened to one patch before the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dropped,
    /// Kept by a method without stage-1 roles.
    Kept,
    /// Stage-1 anchor kept with its own feature.
    Pillar,
    /// Stage-1 anchor that folds similar neighbours into itself.
    Collector,
}

/// Per-patch pruning outcome on a `grid` (rows, columns), raster order.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchMarks {
    pub grid: (usize, usize),
    pub roles: Vec<Role>,
    /// Which patches survive a stage-2 cut; `None` when there was no cut.
    pub survivors: Option<Vec<bool>>,
}

impl PatchMarks {
    /// `stage1`: patches kept before the decoder; `pillars`: the stage-1 pillars among them (empty
    /// for methods without stage-1 roles, whose kept patches are then [`Role::Kept`]; otherwise the
    /// other kept patches are collectors); `stage2`: survivors of the cut, `None` without one.
    pub fn new(grid: (usize, usize), stage1: &[usize], pillars: &[usize], stage2: Option<&[usize]>) -> Result<Self> {
        let n = grid.0 * grid.1;
        let check = |what: &str, ids: &[usize]| match ids.iter().find(|&&i| i >= n) {
            Some(i) => {
                Err(Error::Unsupported(format!("overlay: {what} patch {i} is outside the {}x{} grid", grid.0, grid.1)))
            }
            None => Ok(()),
        };
        check("stage-1", stage1)?;
        check("pillar", pillars)?;
        let mut roles = vec![Role::Dropped; n];
        let plain = if pillars.is_empty() { Role::Kept } else { Role::Collector };
        for &i in stage1 {
            roles[i] = plain;
        }
        for &i in pillars {
            if roles[i] == Role::Dropped {
                return Err(Error::Unsupported(format!("overlay: pillar {i} is not among the stage-1 patches")));
            }
            roles[i] = Role::Pillar;
        }
        let survivors = match stage2 {
            None => None,
            Some(ids) => {
                check("stage-2", ids)?;
                let mut s = vec![false; n];
                for &i in ids {
                    if roles[i] == Role::Dropped {
                        return Err(Error::Unsupported(format!(
                            "overlay: stage-2 survivor {i} is not among the stage-1 patches"
                        )));
                    }
                    s[i] = true;
                }
                Some(s)
            }
        };
        Ok(Self { grid, roles, survivors })
    }

    /// The marks of a generation's report on grid `g` of `layout` (a cut is shown only when stage 2
    /// ran); slots that are not patches of that grid (other grids, newline tokens) are left out.
    pub fn of_grid(r: &VisionReport, layout: &VisualLayout, g: usize) -> Result<Self> {
        let grid = layout_grid(layout, g)?;
        let raster = |slots: &[usize]| grid_cells(layout, g, slots.iter().map(|&s| (s, ()))).map(|v| v.0);
        let stage2 = r.k2.map(|_| raster(&r.stage2)).transpose()?;
        Self::new(grid, &raster(&r.stage1)?, &raster(&r.pillars)?, stage2.as_deref())
    }

    fn survives(&self, i: usize) -> bool {
        self.survivors.as_ref().is_some_and(|s| s[i])
    }
}

/// (rows, cols) of grid `g` of `layout`.
fn layout_grid(layout: &VisualLayout, g: usize) -> Result<(usize, usize)> {
    let grid = layout.grids.get(g).ok_or_else(|| Error::Unsupported(format!("overlay: the layout has no grid {g}")))?;
    Ok((grid.rows, grid.cols))
}

/// The items whose slot is a patch of grid `g`, as (raster indices in that grid, their values).
fn grid_cells<T>(
    layout: &VisualLayout,
    g: usize,
    items: impl Iterator<Item = (usize, T)>,
) -> Result<(Vec<usize>, Vec<T>)> {
    let (_, cols) = layout_grid(layout, g)?;
    let mut out = (Vec::new(), Vec::new());
    for (slot, value) in items {
        match layout.slots.get(slot) {
            None => {
                return Err(Error::Unsupported(format!(
                    "overlay: slot {slot} is outside the image's {} slots",
                    layout.len()
                )))
            }
            Some(&Slot::Patch { grid, row, col }) if grid == g => {
                out.0.push(row * cols + col);
                out.1.push(value);
            }
            Some(_) => {}
        }
    }
    Ok(out)
}

/// A grid's caption when an overlay shows several.
fn caption(layout: &VisualLayout, g: usize) -> String {
    let grid = layout.grids[g];
    match layout.anyres() {
        Some(_) if g == 0 => format!("base view: {}×{} patches", grid.rows, grid.cols),
        Some(_) => format!("{} crops: {}×{} patches", layout.views - 1, grid.rows, grid.cols),
        None => format!("grid {g}: {}×{} patches", grid.rows, grid.cols),
    }
}

/// What a generation did to `original` (or, with `heatmap`, the per-patch saliency): one panel per
/// grid of the image's layout, the grid with most patches over the picture and the others beside it,
/// titled by [`summary`]; `bbox` on every panel.
pub fn draw(
    original: &RgbImage,
    encoded: &EncodedImage,
    report: &VisionReport,
    heatmap: bool,
    bbox: Option<BoxMark<'_>>,
) -> Result<Overlay> {
    let geometry =
        encoded.geometry.ok_or_else(|| Error::Unsupported("overlay: the image did not come from a file".into()))?;
    if original.dimensions() != (geometry.width, geometry.height) {
        return Err(Error::Unsupported(format!(
            "overlay: the image is {}x{} but it was encoded at {}x{}",
            original.width(),
            original.height(),
            geometry.width,
            geometry.height
        )));
    }
    let layout = &encoded.layout;
    if encoded.windows.len() != layout.grids.len() {
        return Err(Error::Unsupported(format!(
            "overlay: the model maps {} of the image's {} grids onto it",
            encoded.windows.len(),
            layout.grids.len()
        )));
    }
    let mut order: Vec<usize> = (0..layout.grids.len()).collect();
    order.sort_by_key(|&g| std::cmp::Reverse(layout.grids[g].rows * layout.grids[g].cols));
    if heatmap {
        let saliency = encoded
            .saliency
            .as_deref()
            .ok_or_else(|| Error::Unsupported("--heatmap: this model gives no per-patch saliency".into()))?;
        let mut grids = Vec::new();
        for &g in &order {
            let grid = layout_grid(layout, g)?;
            let (cells, values) = grid_cells(layout, g, saliency.iter().copied().enumerate())?;
            let mut raster = vec![0.0; grid.0 * grid.1];
            for (c, v) in cells.into_iter().zip(values) {
                raster[c] = v;
            }
            grids.push((g, grid, raster));
        }
        let panels: Vec<Panel<'_>> = grids
            .iter()
            .map(|(g, grid, raster)| Panel {
                window: encoded.windows[*g],
                layer: Layer::Saliency { grid: *grid, saliency: raster },
                caption: caption(layout, *g),
            })
            .collect();
        return render_panels(original, &panels, Some("[CLS] saliency"), bbox);
    }
    let marks = order.iter().map(|&g| PatchMarks::of_grid(report, layout, g)).collect::<Result<Vec<_>>>()?;
    let panels: Vec<Panel<'_>> = order
        .iter()
        .zip(&marks)
        .map(|(&g, marks)| Panel {
            window: encoded.windows[g],
            layer: Layer::Pruning(marks),
            caption: caption(layout, g),
        })
        .collect();
    render_panels(original, &panels, Some(&summary(report)), bbox)
}

/// A one-line summary of a report for the legend's title, e.g. `Nüwa, budget 64: 112 → 16 tokens`.
pub fn summary(r: &VisionReport) -> String {
    if r.method == "none" {
        return format!("no pruning: {} tokens", r.k1);
    }
    let name = if r.method == "nuwa" { "Nüwa" } else { r.method };
    let budget = match (r.keep_ratio, r.budget) {
        (Some(k), _) => format!(", keep {}%", k * 100.0),
        (None, Some(b)) => format!(", budget {b}"),
        (None, None) => String::new(),
    };
    let tokens = match r.k2 {
        Some(k2) => format!("{} → {k2}", r.k1),
        None => r.k1.to_string(),
    };
    format!("{name}{budget}: {tokens} tokens")
}

/// What to paint over the patches.
#[derive(Debug, Clone, Copy)]
pub enum Layer<'a> {
    /// Pillars, collectors, stage-2 survivors and dropped patches.
    Pruning(&'a PatchMarks),
    /// The per-patch [CLS] saliency (raster order), coloured by rank: stage-1 selection only
    /// depends on the order, and raw values are too peaked to show anything but the maximum.
    Saliency { grid: (usize, usize), saliency: &'a [f32] },
}

/// A box in original-image pixels `[x1, y1, x2, y2]` (either corner order) and its label.
#[derive(Debug, Clone, Copy)]
pub struct BoxMark<'a> {
    pub rect: [f64; 4],
    pub label: &'a str,
}

/// The drawn picture and where its legend went (`[x0, y0, x1, y1]`, end-exclusive pixels); no
/// legend when the image is too small for legible text.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub image: RgbImage,
    pub legend: Option<[u32; 4]>,
}

impl Overlay {
    /// Writes the picture as PNG, whatever the extension; errors name `path`.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        self.image
            .save_with_format(path, image::ImageFormat::Png)
            .map_err(|e| Error::io(path, format!("cannot write the PNG: {e}")))
    }
}

/// Draws `layer` (and `bbox`) over `original`, whose mapping onto the model's input is `geometry`:
/// the single-grid case of [`render_panels`].
pub fn render(
    original: &RgbImage,
    geometry: &Geometry,
    layer: Layer<'_>,
    title: Option<&str>,
    bbox: Option<BoxMark<'_>>,
) -> Result<Overlay> {
    if original.dimensions() != (geometry.width, geometry.height) {
        return Err(Error::Unsupported(format!(
            "overlay: the image is {}x{} but its geometry is for {}x{}",
            original.width(),
            original.height(),
            geometry.width,
            geometry.height
        )));
    }
    render_panels(original, &[Panel { window: geometry.input_rect(), layer, caption: String::new() }], title, bbox)
}

/// One grid drawn over a copy of the picture.
#[derive(Debug, Clone)]
pub struct Panel<'a> {
    /// Where the grid lies on the original image, `[x0, y0, x1, y1]` in its pixels (past its edges
    /// where the model input shows padding).
    pub window: [f64; 4],
    pub layer: Layer<'a>,
    /// Written in the panel's top-left corner when there are several panels.
    pub caption: String,
}

impl Panel<'_> {
    fn grid(&self) -> Result<(usize, usize)> {
        match self.layer {
            Layer::Pruning(m) => Ok(m.grid),
            Layer::Saliency { grid, saliency } if saliency.len() == grid.0 * grid.1 => Ok(grid),
            Layer::Saliency { grid, saliency } => Err(Error::Unsupported(format!(
                "overlay: {} saliency values for a {}x{} grid",
                saliency.len(),
                grid.0,
                grid.1
            ))),
        }
    }
}

/// Draws each panel over its own copy of `original`, side by side left to right with a thin gap; the
/// first (the main picture) gets the legend, `bbox` is drawn on every panel.
pub fn render_panels(
    original: &RgbImage,
    panels: &[Panel<'_>],
    title: Option<&str>,
    bbox: Option<BoxMark<'_>>,
) -> Result<Overlay> {
    if panels.is_empty() {
        return Err(Error::Unsupported("overlay: nothing to draw (no patch grid)".into()));
    }
    let (w, h) = original.dimensions();
    let font_px = (w.min(h) as f32 * 0.036).clamp(11.0, 72.0);
    let bbox_px = bbox.map(|b| box_pixels(b.rect, w, h));
    let mut drawn = Vec::with_capacity(panels.len());
    let mut main_cover = (Vec::new(), Vec::new());
    for (i, panel) in panels.iter().enumerate() {
        let grid = panel.grid()?;
        let rects: Vec<Option<[u32; 4]>> =
            (0..grid.0 * grid.1).map(|k| cell_pixels(panel.window, (k / grid.1, k % grid.1), grid, (w, h))).collect();
        let mut img = original.clone();
        let weights = paint(&mut img, &rects, panel, grid);
        if let (Some(b), Some(r)) = (bbox, bbox_px) {
            draw_box(&mut img, r, b.label, font_px);
        }
        if panels.len() > 1 && !panel.caption.is_empty() {
            draw_caption(&mut img, &panel.caption, font_px);
        }
        if i == 0 {
            main_cover = (rects, weights);
        }
        drawn.push(img);
    }

    let entries = legend_entries(panels.iter().map(|p| p.layer), bbox.is_some());
    let long: Vec<_> = entries.iter().map(|&(swatch, long, _)| (swatch, long)).collect();
    let short: Vec<_> = entries.iter().map(|&(swatch, _, short)| (swatch, short)).collect();
    // On small images the title goes first, then the explanations, before the text gets too small.
    let variants = [(title, &long), (None, &long), (None, &short)];
    let fitted = variants.into_iter().find_map(|(t, e)| fit_legend(w, h, font_px, t, e).map(|size| (size, t, e)));
    let legend = fitted.map(|(size, title, entries)| {
        let at = pick_corner(size, w, h, &main_cover.0, &main_cover.1, bbox_px);
        draw_legend(&mut drawn[0], at, size, title, entries);
        at
    });
    Ok(Overlay { image: side_by_side(drawn), legend })
}

/// Paints a panel's layer, its grid lines and (for pruning) the outlines over `img`; returns how much
/// each patch matters for the legend's placement.
fn paint(img: &mut RgbImage, rects: &[Option<[u32; 4]>], panel: &Panel<'_>, grid: (usize, usize)) -> Vec<f32> {
    let [wx0, wy0, wx1, wy1] = panel.window;
    let patch_px = ((wx1 - wx0) / grid.1 as f64).min((wy1 - wy0) / grid.0 as f64);
    let weights: Vec<f32> = match panel.layer {
        Layer::Pruning(marks) => {
            fill_roles(img, rects, marks);
            (0..rects.len())
                .map(|i| match marks.roles[i] {
                    Role::Dropped => 0.0,
                    _ if marks.survives(i) => 4.0,
                    _ => 1.0,
                })
                .collect()
        }
        Layer::Saliency { saliency, .. } => {
            let t = ranks(saliency);
            for (rect, &t) in rects.iter().zip(&t) {
                if let Some(r) = rect {
                    fill_blend(img, *r, heat_colour(t), HEAT_ALPHA);
                }
            }
            t
        }
    };
    if patch_px >= GRID_MIN_PX {
        for r in rects.iter().flatten() {
            fill_blend(img, [r[0], r[1], r[2], r[1] + 1], palette::GRID, GRID_ALPHA);
            fill_blend(img, [r[0], r[1] + 1, r[0] + 1, r[3]], palette::GRID, GRID_ALPHA);
        }
    }
    // After the grid lines, so that they do not dim the outlines.
    if let Layer::Pruning(marks) = panel.layer {
        outline_kept(img, rects, marks, patch_px);
    }
    weights
}

/// Panels left to right, separated by a gap of [`palette::GAP`] about 1 % of a panel wide.
fn side_by_side(panels: Vec<RgbImage>) -> RgbImage {
    if panels.len() == 1 {
        return panels.into_iter().next().expect("one panel");
    }
    let (w, h) = panels[0].dimensions();
    let gap = (w / 100).max(2);
    let n = panels.len() as u32;
    let mut out = RgbImage::from_pixel(n * w + (n - 1) * gap, h, Rgb(palette::GAP));
    for (i, p) in panels.iter().enumerate() {
        image::imageops::replace(&mut out, p, i64::from(i as u32 * (w + gap)), 0);
    }
    out
}

/// A panel's name on a dark tab in its top-left corner.
fn draw_caption(img: &mut RgbImage, caption: &str, font_px: f32) {
    let font = font();
    let (w, h) = img.dimensions();
    let px = (font_px * 0.8).max(MIN_FONT_PX);
    let scale = PxScale::from(px);
    let pad = (px / 4.0).ceil() as u32;
    let text = fit_text(&font, scale, caption, w.saturating_sub(2 * pad));
    let tab = [0, 0, (text_size(scale, &font, &text).0 + 2 * pad).min(w), (line_height(&font, px) + 2 * pad).min(h)];
    fill_blend(img, tab, palette::LEGEND_BG, LEGEND_ALPHA);
    draw_text_mut(img, Rgb(palette::LEGEND_TEXT), pad as i32, pad as i32, scale, &font, &text);
}

/// Pixels of cell (`row`, `col`) of `grid` over `window` on a `size` image: those whose centres fall
/// inside its rectangle, so every pixel belongs to exactly one patch. `None` when it shows only
/// padding or covers no pixel centre.
fn cell_pixels(
    window: [f64; 4],
    (row, col): (usize, usize),
    grid: (usize, usize),
    (w, h): (u32, u32),
) -> Option<[u32; 4]> {
    let r = cell_rect(window, (row as u32, col as u32), (grid.0 as u32, grid.1 as u32), (w, h))?;
    let edge = |v: f64, max: u32| ((v - 0.5).ceil().max(0.0) as u32).min(max);
    let px = [edge(r[0], w), edge(r[1], h), edge(r[2], w), edge(r[3], h)];
    (px[2] > px[0] && px[3] > px[1]).then_some(px)
}

fn role_colour(role: Role) -> [u8; 3] {
    match role {
        Role::Dropped => palette::DROPPED,
        Role::Kept => palette::KEPT,
        Role::Pillar => palette::PILLAR,
        Role::Collector => palette::COLLECTOR,
    }
}

fn fill_roles(img: &mut RgbImage, rects: &[Option<[u32; 4]>], marks: &PatchMarks) {
    for (rect, &role) in rects.iter().zip(&marks.roles) {
        if let Some(r) = *rect {
            let alpha = if role == Role::Dropped { DROP_ALPHA } else { FILL_ALPHA };
            fill_blend(img, r, role_colour(role), alpha);
        }
    }
}

/// A one-pixel edge in the role's own colour on kept patches (a translucent fill changes hue over
/// a coloured image; the edge shows the true colour), and the thick outline on stage-2 survivors.
fn outline_kept(img: &mut RgbImage, rects: &[Option<[u32; 4]>], marks: &PatchMarks, patch_px: f64) {
    // About a seventh of a patch: thick enough to see, thin enough to leave the fill visible.
    let t = ((patch_px / 7.0).round() as u32).max(1);
    for (i, rect) in rects.iter().enumerate() {
        let (Some(r), role) = (*rect, marks.roles[i]) else { continue };
        if role == Role::Dropped {
            continue;
        }
        if !marks.survives(i) {
            if patch_px >= GRID_MIN_PX {
                outline(img, r, 1, role_colour(role));
            }
            continue;
        }
        outline(img, r, t, palette::SURVIVOR);
        let inner = [r[0] + t, r[1] + t, r[2].saturating_sub(t), r[3].saturating_sub(t)];
        if inner[2] > inner[0] + 2 && inner[3] > inner[1] + 2 {
            outline(img, inner, 1, palette::SURVIVOR_EDGE);
        }
    }
}

/// Rank of each value scaled to [0, 1] (equal values share the lower rank).
fn ranks(values: &[f32]) -> Vec<f32> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let top = values.len().saturating_sub(1).max(1) as f32;
    let mut t = vec![0.0; values.len()];
    let mut rank = 0;
    for (k, &i) in order.iter().enumerate() {
        if k > 0 && values[i] != values[order[k - 1]] {
            rank = k;
        }
        t[i] = rank as f32 / top;
    }
    t
}

/// Blends `colour` over `r` (`[x0, y0, x1, y1]`, end-exclusive, already inside the image).
fn fill_blend(img: &mut RgbImage, r: [u32; 4], colour: [u8; 3], alpha: f32) {
    for y in r[1]..r[3] {
        for x in r[0]..r[2] {
            let p = img.get_pixel_mut(x, y);
            *p = blend(*p, colour, alpha);
        }
    }
}

fn fill(img: &mut RgbImage, r: [u32; 4], colour: [u8; 3]) {
    if r[2] > r[0] && r[3] > r[1] {
        let rect = Rect::at(r[0] as i32, r[1] as i32).of_size(r[2] - r[0], r[3] - r[1]);
        draw_filled_rect_mut(img, rect, Rgb(colour));
    }
}

/// A `t`-pixel band just inside `r`.
fn outline(img: &mut RgbImage, r: [u32; 4], t: u32, colour: [u8; 3]) {
    let [x0, y0, x1, y1] = r;
    let (tx, ty) = (t.min(x1 - x0), t.min(y1 - y0));
    fill(img, [x0, y0, x1, y0 + ty], colour);
    fill(img, [x0, y1 - ty, x1, y1], colour);
    fill(img, [x0, y0, x0 + tx, y1], colour);
    fill(img, [x1 - tx, y0, x1, y1], colour);
}

/// A box in pixels, corners sorted and clamped to the image, at least one pixel each way.
fn box_pixels(b: [f64; 4], w: u32, h: u32) -> [u32; 4] {
    let clamp = |v: f64, max: u32| (v.max(0.0).min(max as f64)) as u32;
    let x0 = clamp(b[0].min(b[2]).floor(), w.saturating_sub(1));
    let y0 = clamp(b[1].min(b[3]).floor(), h.saturating_sub(1));
    let x1 = clamp(b[0].max(b[2]).ceil(), w).max(x0 + 1);
    let y1 = clamp(b[1].max(b[3]).ceil(), h).max(y0 + 1);
    [x0, y0, x1, y1]
}

fn draw_box(img: &mut RgbImage, r: [u32; 4], label: &str, font_px: f32) {
    let (w, h) = img.dimensions();
    let t = ((w.min(h) as f32 / 130.0).round() as u32).max(2);
    let halo = [r[0].saturating_sub(1), r[1].saturating_sub(1), (r[2] + 1).min(w), (r[3] + 1).min(h)];
    outline(img, halo, t + 2, palette::BOX_HALO);
    outline(img, r, t, palette::BOX);
    if label.is_empty() {
        return;
    }
    let font = font();
    let scale = PxScale::from(font_px);
    let pad = (font_px / 4.0).ceil() as u32;
    let line = line_height(&font, font_px);
    let text = fit_text(&font, scale, label, w.saturating_sub(2 * pad));
    let tab_w = (text_size(scale, &font, &text).0 + 2 * pad).min(w);
    let tab_h = (line + 2 * pad).min(h);
    // Above the box when there is room, else just inside its top edge.
    let y = if r[1] >= tab_h { r[1] - tab_h } else { (r[1] + t).min(h - tab_h) };
    let x = r[0].min(w - tab_w);
    fill(img, [x, y, x + tab_w, y + tab_h], palette::BOX);
    draw_text_mut(img, Rgb(palette::BOX_HALO), (x + pad) as i32, (y + pad) as i32, scale, &font, &text);
}

/// `text`, shortened with an ellipsis until it is at most `max_w` pixels wide.
fn fit_text(font: &FontRef<'_>, scale: PxScale, text: &str, max_w: u32) -> String {
    if text_size(scale, font, text).0 <= max_w {
        return text.to_owned();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let s: String = chars.iter().collect::<String>() + "…";
        if text_size(scale, font, &s).0 <= max_w {
            return s;
        }
    }
    String::new()
}

fn line_height(font: &FontRef<'_>, px: f32) -> u32 {
    use ab_glyph::ScaleFont;
    font.as_scaled(PxScale::from(px)).height().ceil() as u32
}

#[derive(Debug, Clone, Copy)]
enum Swatch {
    Fill([u8; 3]),
    Dropped,
    Survivor,
    Gradient,
    Box,
}

/// Legend rows for what `layers` show: swatch, label, and a shorter label for small images.
fn legend_entries<'a>(
    layers: impl Iterator<Item = Layer<'a>>,
    with_box: bool,
) -> Vec<(Swatch, &'static str, &'static str)> {
    let layers: Vec<Layer<'_>> = layers.collect();
    let marks: Vec<&PatchMarks> =
        layers.iter().filter_map(|l| if let Layer::Pruning(m) = l { Some(*m) } else { None }).collect();
    let has = |role| marks.iter().any(|m| m.roles.contains(&role));
    let mut entries = Vec::new();
    if has(Role::Pillar) {
        entries.push((Swatch::Fill(palette::PILLAR), "pillar: kept as is", "pillar"));
    }
    if has(Role::Collector) {
        entries.push((Swatch::Fill(palette::COLLECTOR), "collector: merges neighbours", "collector"));
    }
    if has(Role::Kept) {
        entries.push((Swatch::Fill(palette::KEPT), "kept", "kept"));
    }
    if marks.iter().any(|m| m.survivors.is_some()) {
        entries.push((Swatch::Survivor, "white outline: survives stage 2", "survivor"));
    }
    if has(Role::Dropped) {
        entries.push((Swatch::Dropped, "dropped", "dropped"));
    }
    if layers.iter().any(|l| matches!(l, Layer::Saliency { .. })) {
        entries.push((Swatch::Gradient, "by rank: low → high", "low → high"));
    }
    if with_box {
        entries.push((Swatch::Box, "answer box", "box"));
    }
    entries
}

/// Legend layout at one font size.
#[derive(Debug, Clone, Copy)]
struct LegendSize {
    font_px: f32,
    w: u32,
    h: u32,
    pad: u32,
    row: u32,
    swatch: u32,
    swatch_w: u32,
}

/// The largest legend, from `font_px` down to [`MIN_FONT_PX`], that takes at most 60 % of the
/// width and half the height; `None` if even the smallest does not fit.
fn fit_legend(w: u32, h: u32, font_px: f32, title: Option<&str>, entries: &[(Swatch, &str)]) -> Option<LegendSize> {
    let rows = entries.len() as u32 + u32::from(title.is_some());
    if rows == 0 {
        return None;
    }
    let font = font();
    let mut px = font_px.floor();
    while px >= MIN_FONT_PX {
        let scale = PxScale::from(px);
        let line = line_height(&font, px);
        let pad = (px / 2.0).ceil() as u32;
        let row = (line as f32 * 1.3).ceil() as u32;
        let swatch = (line as f32 * 0.85).round() as u32;
        let gradient = entries.iter().any(|(s, _)| matches!(s, Swatch::Gradient));
        let swatch_w = if gradient { swatch * 4 } else { swatch };
        let text_w = |s: &str| text_size(scale, &font, s).0;
        let entries_w = entries.iter().map(|(_, label)| swatch_w + pad + text_w(label)).max().unwrap_or(0);
        let title_w = title.map_or(0, text_w);
        let size = LegendSize {
            font_px: px,
            w: entries_w.max(title_w) + 2 * pad,
            // The last row needs only its line, not the spacing after it.
            h: rows * row + 2 * pad - (row - line),
            pad,
            row,
            swatch,
            swatch_w,
        };
        if size.w as f32 <= 0.6 * w as f32 && size.h as f32 <= 0.5 * h as f32 {
            return Some(size);
        }
        px -= 1.0;
    }
    None
}

/// The corner (a small margin in) where the legend hides the least: kept patches weigh by
/// `weights` per pixel covered, the grounding box weighs more than any patch.
fn pick_corner(
    size: LegendSize,
    w: u32,
    h: u32,
    rects: &[Option<[u32; 4]>],
    weights: &[f32],
    bbox: Option<[u32; 4]>,
) -> [u32; 4] {
    let margin = |room: u32| (size.pad / 2).min(room);
    let (mx, my) = (margin(w - size.w), margin(h - size.h));
    let xs = [mx, w - size.w - mx];
    let ys = [my, h - size.h - my];
    let overlap = |a: [u32; 4], b: [u32; 4]| {
        let ow = a[2].min(b[2]).saturating_sub(a[0].max(b[0]));
        let oh = a[3].min(b[3]).saturating_sub(a[1].max(b[1]));
        ow as f32 * oh as f32
    };
    let mut best: Option<([u32; 4], f32)> = None;
    // Top-right first: the usual place for a legend when nothing decides otherwise.
    for (x, y) in [(xs[1], ys[0]), (xs[0], ys[0]), (xs[1], ys[1]), (xs[0], ys[1])] {
        let at = [x, y, x + size.w, y + size.h];
        let mut cost: f32 = rects.iter().zip(weights).filter_map(|(r, &wt)| r.map(|r| wt * overlap(at, r))).sum();
        if let Some(b) = bbox {
            cost += 8.0 * overlap(at, b);
        }
        if best.is_none_or(|(_, c)| cost < c) {
            best = Some((at, cost));
        }
    }
    best.expect("four corners were scored").0
}

fn draw_legend(img: &mut RgbImage, at: [u32; 4], size: LegendSize, title: Option<&str>, entries: &[(Swatch, &str)]) {
    let font = font();
    let scale = PxScale::from(size.font_px);
    let line = line_height(&font, size.font_px);
    fill_blend(img, at, palette::LEGEND_BG, LEGEND_ALPHA);
    let text = Rgb(palette::LEGEND_TEXT);
    let x = at[0] + size.pad;
    let mut y = at[1] + size.pad;
    if let Some(title) = title {
        draw_text_mut(img, text, x as i32, y as i32, scale, &font, title);
        y += size.row;
    }
    for &(swatch, label) in entries {
        let sy = y + (line - size.swatch.min(line)) / 2;
        let r = [x, sy, x + size.swatch, sy + size.swatch];
        let edge = ((size.swatch as f32 / 6.0).round() as u32).max(1);
        match swatch {
            Swatch::Fill(c) => fill(img, r, c),
            Swatch::Dropped => {
                fill(img, r, palette::DROPPED);
                outline(img, r, 1, [128, 128, 128]);
            }
            Swatch::Survivor => {
                fill(img, r, [128, 128, 128]);
                outline(img, r, edge, palette::SURVIVOR);
            }
            Swatch::Box => outline(img, r, edge, palette::BOX),
            Swatch::Gradient => {
                for dx in 0..size.swatch_w {
                    let c = heat_colour(dx as f32 / (size.swatch_w - 1).max(1) as f32);
                    fill(img, [x + dx, sy, x + dx + 1, sy + size.swatch], c);
                }
            }
        }
        let tx = x + size.swatch_w + size.pad;
        draw_text_mut(img, text, tx as i32, y as i32, scale, &font, label);
        y += size.row;
    }
}
