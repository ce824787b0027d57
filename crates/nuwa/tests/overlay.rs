//! Overlays on synthetic images: the output keeps the input's size, and the pixels of known patches
//! have the colours the palette and the blend rule say (worked out here, not read back from the
//! renderer). Geometry comes from LLaVA-1.5's real preprocessing (24×24 grid).

mod common;
use common::scratch::Scratch;
use image::{Rgb, RgbImage};
use nuwa::ground::ground_box;
use nuwa::models::llava::processor::{preprocess, PreprocessConfig};
use nuwa::overlay::{
    heat_colour, palette, render, BoxMark, Layer, Overlay, PatchMarks, Role, DROP_ALPHA, FILL_ALPHA, HEAT_ALPHA,
};
use nuwa::preprocess::Geometry;
use std::path::PathBuf;

const GRID: (usize, usize) = (24, 24);

fn config() -> PreprocessConfig {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llava-1.5/preprocessor_config.json");
    PreprocessConfig::from_file(&path).unwrap()
}

/// A picture whose every pixel differs from its neighbours, so a misplaced patch shows.
fn synthetic(w: u32, h: u32) -> (RgbImage, Geometry) {
    let img =
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 200 + 30) as u8]));
    let geometry = preprocess(&img, &config()).geometry;
    (img, geometry)
}

/// The blend rule, written out independently of the library: `over` at opacity `alpha`, rounded.
fn expected(under: Rgb<u8>, over: [u8; 3], alpha: f32) -> Rgb<u8> {
    Rgb([0, 1, 2].map(|c| (under[c] as f32 * (1.0 - alpha) + over[c] as f32 * alpha).round() as u8))
}

fn idx(row: usize, col: usize) -> usize {
    row * GRID.1 + col
}

/// The pixel at the centre of patch (`row`, `col`) on the original image.
fn centre(g: &Geometry, row: usize, col: usize) -> (u32, u32) {
    let r = g.patch_rect(row as u32, col as u32, GRID.0 as u32, GRID.1 as u32).expect("patch shows the image");
    (((r[0] + r[2]) / 2.0) as u32, ((r[1] + r[3]) / 2.0) as u32)
}

/// The leftmost pixel of patch (`row`, `col`) on its middle row: on a stage-2 survivor's outline.
fn left_edge(g: &Geometry, row: usize, col: usize) -> (u32, u32) {
    let r = g.patch_rect(row as u32, col as u32, GRID.0 as u32, GRID.1 as u32).unwrap();
    ((r[0] - 0.5).ceil() as u32, ((r[1] + r[3]) / 2.0) as u32)
}

fn outside_legend(o: &Overlay, (x, y): (u32, u32)) -> bool {
    o.legend.is_none_or(|l| x < l[0] || x >= l[2] || y < l[1] || y >= l[3])
}

/// Checks that pixel `at` is `under` blended with `colour` at `alpha`.
fn assert_pixel(o: &Overlay, img: &RgbImage, at: (u32, u32), colour: [u8; 3], alpha: f32, what: &str) {
    assert!(outside_legend(o, at), "{what}: pixel {at:?} is under the legend {:?}", o.legend);
    let want = expected(*img.get_pixel(at.0, at.1), colour, alpha);
    assert_eq!(*o.image.get_pixel(at.0, at.1), want, "{what} at {at:?}");
}

/// Patches away from the padding in every image used here (rows and columns 8…15 show the image
/// whatever the aspect ratio up to 2:1).
const PILLAR: (usize, usize) = (9, 9);
const COLLECTOR: (usize, usize) = (9, 11);
const SURVIVING_PILLAR: (usize, usize) = (12, 9);
const SURVIVING_COLLECTOR: (usize, usize) = (12, 11);
/// Inside the kept patches' bounding box: a corner legend covering it would also cover a kept
/// patch, which it avoids.
const DROPPED: (usize, usize) = (10, 10);

fn nuwa_marks() -> PatchMarks {
    let stage1: Vec<usize> =
        [PILLAR, COLLECTOR, SURVIVING_PILLAR, SURVIVING_COLLECTOR].iter().map(|&(r, c)| idx(r, c)).collect();
    let pillars = [idx(PILLAR.0, PILLAR.1), idx(SURVIVING_PILLAR.0, SURVIVING_PILLAR.1)];
    let stage2 = [idx(SURVIVING_PILLAR.0, SURVIVING_PILLAR.1), idx(SURVIVING_COLLECTOR.0, SURVIVING_COLLECTOR.1)];
    let mut sorted = stage1.clone();
    sorted.sort();
    PatchMarks::new(GRID, &sorted, &pillars, Some(&stage2)).unwrap()
}

#[test]
fn marks_record_stage_one_roles_and_stage_two_survivors() {
    let m = nuwa_marks();
    assert_eq!(m.roles[idx(PILLAR.0, PILLAR.1)], Role::Pillar);
    assert_eq!(m.roles[idx(COLLECTOR.0, COLLECTOR.1)], Role::Collector);
    assert_eq!(m.roles[idx(DROPPED.0, DROPPED.1)], Role::Dropped);
    let s = m.survivors.as_ref().unwrap();
    assert!(s[idx(SURVIVING_COLLECTOR.0, SURVIVING_COLLECTOR.1)] && !s[idx(COLLECTOR.0, COLLECTOR.1)]);
    let err = PatchMarks::new(GRID, &[1, 2], &[], Some(&[3])).unwrap_err().to_string();
    assert!(err.contains("stage-2 survivor 3"), "{err}");
    let err = PatchMarks::new(GRID, &[1, 576], &[], None).unwrap_err().to_string();
    assert!(err.contains("576") && err.contains("24x24"), "{err}");
}

#[test]
fn nuwa_overlay_colours_kept_and_dropped_patches() {
    for (w, h) in [(640, 480), (480, 640), (336, 336), (1000, 700), (301, 500)] {
        let (img, g) = synthetic(w, h);
        let o =
            render(&img, &g, Layer::Pruning(&nuwa_marks()), Some("Nüwa, budget 64: 112 → 16 tokens"), None).unwrap();
        let what = |p: &str| format!("{w}x{h} {p}");
        assert_eq!(o.image.dimensions(), (w, h), "output keeps the input size");
        assert!(o.legend.is_some(), "{}", what("legend fits"));
        let (r, c) = PILLAR;
        assert_pixel(&o, &img, centre(&g, r, c), palette::PILLAR, FILL_ALPHA, &what("pillar"));
        let (r, c) = COLLECTOR;
        assert_pixel(&o, &img, centre(&g, r, c), palette::COLLECTOR, FILL_ALPHA, &what("collector"));
        let (r, c) = DROPPED;
        assert_pixel(&o, &img, centre(&g, r, c), palette::DROPPED, DROP_ALPHA, &what("dropped"));
        // A survivor keeps its stage-1 fill inside and gets the survivor outline at its edge.
        let (r, c) = SURVIVING_COLLECTOR;
        assert_pixel(&o, &img, centre(&g, r, c), palette::COLLECTOR, FILL_ALPHA, &what("surviving collector"));
        let (r, c) = SURVIVING_PILLAR;
        assert_pixel(&o, &img, centre(&g, r, c), palette::PILLAR, FILL_ALPHA, &what("surviving pillar"));
        let edge = left_edge(&g, r, c);
        assert_eq!(*o.image.get_pixel(edge.0, edge.1), Rgb(palette::SURVIVOR), "{}", what("survivor outline"));
        // A non-survivor's edge is not outlined.
        let edge = left_edge(&g, COLLECTOR.0, COLLECTOR.1);
        assert_ne!(*o.image.get_pixel(edge.0, edge.1), Rgb(palette::SURVIVOR), "{}", what("no outline"));
    }
}

#[test]
fn methods_without_stages_show_kept_and_dropped() {
    let (img, g) = synthetic(500, 375);
    let kept = [idx(10, 4), idx(10, 5)];
    let marks = PatchMarks::new(GRID, &kept, &[], None).unwrap();
    let o = render(&img, &g, Layer::Pruning(&marks), None, None).unwrap();
    assert_eq!(o.image.dimensions(), (500, 375));
    assert_pixel(&o, &img, centre(&g, 10, 4), palette::KEPT, FILL_ALPHA, "kept");
    assert_pixel(&o, &img, centre(&g, 16, 20), palette::DROPPED, DROP_ALPHA, "dropped");
}

#[test]
fn heatmap_colours_patches_by_saliency_rank() {
    let (img, g) = synthetic(640, 480);
    // Saliency rising along the raster order except for a peak and a trough away from the corners.
    let mut saliency: Vec<f32> = (0..GRID.0 * GRID.1).map(|i| i as f32 * 1e-3).collect();
    saliency[idx(10, 12)] = 50.0;
    saliency[idx(14, 3)] = -1.0;
    let o =
        render(&img, &g, Layer::Saliency { grid: GRID, saliency: &saliency }, Some("[CLS] saliency"), None).unwrap();
    assert_eq!(o.image.dimensions(), (640, 480));
    assert_pixel(&o, &img, centre(&g, 10, 12), heat_colour(1.0), HEAT_ALPHA, "most salient");
    assert_pixel(&o, &img, centre(&g, 14, 3), heat_colour(0.0), HEAT_ALPHA, "least salient");
    // The colour map brightens from least to most salient.
    let luma = |c: [u8; 3]| c[0] as u32 * 3 + c[1] as u32 * 6 + c[2] as u32;
    assert!((0..10).all(|i| luma(heat_colour(i as f32 / 10.0)) < luma(heat_colour((i + 1) as f32 / 10.0))));
    let err = render(&img, &g, Layer::Saliency { grid: GRID, saliency: &saliency[..5] }, None, None).unwrap_err();
    assert!(err.to_string().contains("5 saliency values"), "{err}");
}

#[test]
fn grounding_box_is_drawn_where_the_answer_maps_it() {
    let (w, h) = (640, 480);
    let (img, g) = synthetic(w, h);
    // The model's answer is in the padded square: y 0.3…0.7 there is rows 112…368 of the image.
    let b = ground_box("[0.25, 0.3, 0.75, 0.7]", &g).unwrap();
    assert_eq!(b.original_pixels.map(f64::round), [160.0, 112.0, 480.0, 368.0]);
    let marks = PatchMarks::new(GRID, &[], &[], None).unwrap();
    let label = "the thing in the middle";
    let o = render(&img, &g, Layer::Pruning(&marks), None, Some(BoxMark { rect: b.original_pixels, label })).unwrap();
    assert_eq!(o.image.dimensions(), (w, h));
    // The box's own line, on its left edge halfway down, and not the inside of the box.
    assert_eq!(*o.image.get_pixel(160, 240), Rgb(palette::BOX));
    assert_ne!(*o.image.get_pixel(200, 240), Rgb(palette::BOX));
    // Its label tab sits just above the top-left corner.
    assert_eq!(*o.image.get_pixel(161, 110), Rgb(palette::BOX));
    let l = o.legend.expect("a legend at 640x480");
    let overlaps = l[0] < 480 && l[2] > 160 && l[1] < 368 && l[3] > 112;
    assert!(!overlaps, "the legend {l:?} avoids the box");
}

#[test]
fn tiny_and_odd_images_keep_their_size() {
    for (w, h) in [(1, 1), (7, 5), (5, 40), (30, 20), (3000, 17)] {
        let (img, g) = synthetic(w, h);
        let layers = [Layer::Pruning(&nuwa_marks()), Layer::Saliency { grid: GRID, saliency: &[0.5; 576] }];
        for layer in layers {
            let bbox = BoxMark { rect: [0.0, 0.0, w as f64, h as f64], label: "everything" };
            let o = render(&img, &g, layer, Some("title"), Some(bbox)).unwrap();
            assert_eq!(o.image.dimensions(), (w, h));
            if let Some(l) = o.legend {
                assert!(l[2] <= w && l[3] <= h, "{w}x{h}: legend {l:?} inside the image");
            }
        }
    }
    let (img, _) = synthetic(7, 5);
    let (_, other) = synthetic(8, 5);
    let err = render(&img, &other, Layer::Pruning(&nuwa_marks()), None, None).unwrap_err();
    assert!(err.to_string().contains("7x5") && err.to_string().contains("8x5"), "{err}");
}

#[test]
fn the_legend_stays_small_and_leaves_tiny_images_alone() {
    for (w, h) in [(500, 375), (375, 500), (4000, 3000), (224, 224)] {
        let (img, g) = synthetic(w, h);
        let o =
            render(&img, &g, Layer::Pruning(&nuwa_marks()), Some("Nüwa, budget 64: 112 → 16 tokens"), None).unwrap();
        let l = o.legend.unwrap_or_else(|| panic!("{w}x{h} has room for a legend"));
        assert!((l[2] - l[0]) as f32 <= 0.6 * w as f32 && (l[3] - l[1]) as f32 <= 0.5 * h as f32, "{w}x{h}: {l:?}");
    }
    let (img, g) = synthetic(40, 30);
    assert!(render(&img, &g, Layer::Pruning(&nuwa_marks()), Some("title"), None).unwrap().legend.is_none());
}

#[test]
fn overlays_save_as_png_and_errors_name_the_path() {
    let (img, g) = synthetic(64, 48);
    let o = render(&img, &g, Layer::Pruning(&nuwa_marks()), None, None).unwrap();
    let dir = Scratch::new("overlay");
    let path = dir.join("o.png");
    o.save_png(&path).unwrap();
    assert_eq!(image::open(&path).unwrap().to_rgb8(), o.image);
    let bad = dir.join("missing-dir/o.png");
    let err = o.save_png(&bad).unwrap_err().to_string();
    assert!(err.contains("missing-dir/o.png"), "{err}");
}
