//! RefCOCO referring-expression comprehension (REC) scoring, reproducing
//! lmms-eval's `refcoco_bbox_rec` task (`tasks/refcoco/utils_rec.py`) so that
//! numbers are comparable with published LLaVA results.
//!
//! Boxes are `[x1, y1, x2, y2]` normalised to `[0, 1]`. The harness does not
//! validate predictions: boxes may be negative, out of range or inverted
//! (`x2 < x1`), and every rule below reproduces what it does with them.

use serde::Serialize;
use serde_json::{json, Value};

/// The question prefix the harness puts before the referring expression.
pub const PROMPT_PREFIX: &str = "Bounding box coordinates are specified in the format \
(top-left x, top-left y, bottom-right x, bottom-right y). All values are floating point \
numbers bounded between 0 and 1. Please provide the bounding box coordinate of the region \
this sentence describes: ";

/// IoU thresholds of the `ACC@t` metrics, in the order of [`RecRowScore::acc`].
pub const THRESHOLDS: [f64; 5] = [0.1, 0.3, 0.5, 0.7, 0.9];

/// The box the harness scores when nothing parses.
const FALLBACK_BOX: [f64; 4] = [0.0; 4];

/// Converts a COCO ground-truth box (`[x, y, w, h]` in pixels) into the
/// normalised corner form the harness scores against, with its exact arithmetic.
pub fn gt_box_from_coco(bbox_xywh: [f64; 4], image_width: f64, image_height: f64) -> [f64; 4] {
    let [x, y, w, h] = bbox_xywh;
    [x / image_width, y / image_height, (x + w) / image_width, (y + h) / image_height]
}

/// First match of the harness regex
/// `\[\s*(-?\d+(?:\.\d+)?),\s*(…),\s*(…),\s*(…)\s*\]` anywhere in `response`.
///
/// As in the regex: no whitespace before a comma, no leading-dot numbers
/// (`.5`), no exponents, exactly four numbers. Decimal digits are ASCII only;
/// Python's `\d` would also take other Unicode digits, which models do not emit.
/// A box whose numbers overflow to infinity (hundreds of digits) counts as unparsed.
pub fn parse_box(response: &str) -> Option<[f64; 4]> {
    // A match attempt only consumes whitespace, digits, '-', '.' and ',',
    // never '[', so trying every '[' keeps the scan linear.
    response
        .match_indices('[')
        .find_map(|(at, _)| match_after_bracket(&response[at + 1..]))
        .filter(|b| b.iter().all(|v| v.is_finite()))
}

/// [`parse_box`], or the harness's `[0, 0, 0, 0]` when nothing parses.
pub fn parse_box_or_zero(response: &str) -> [f64; 4] {
    parse_box(response).unwrap_or(FALLBACK_BOX)
}

fn match_after_bracket(s: &str) -> Option<[f64; 4]> {
    let mut rest = skip_space(s);
    let mut out = [0.0; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        if i > 0 {
            rest = skip_space(rest.strip_prefix(',')?);
        }
        let (number, tail) = split_number(rest)?;
        // The token is `-?\d+(\.\d+)?`, which always parses; std's parser is
        // correctly rounded like Python's `float()`.
        *slot = number.parse().ok()?;
        rest = tail;
    }
    skip_space(rest).strip_prefix(']')?;
    Some(out)
}

/// Splits a leading `-?\d+(?:\.\d+)?` off `s`. Greedy matching is exact here:
/// backtracking can never help because what follows a number must be one of
/// `,`, whitespace or `]`.
fn split_number(s: &str) -> Option<(&str, &str)> {
    let bytes = s.as_bytes();
    let mut end = usize::from(bytes.first() == Some(&b'-'));
    let int_digits = ascii_digits(&bytes[end..]);
    if int_digits == 0 {
        return None;
    }
    end += int_digits;
    if bytes.get(end) == Some(&b'.') {
        let frac_digits = ascii_digits(&bytes[end + 1..]);
        if frac_digits > 0 {
            end += 1 + frac_digits;
        }
    }
    Some(s.split_at(end))
}

fn ascii_digits(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// Skips Python's `\s` for `str` patterns: Rust's Unicode whitespace plus the
/// separators U+001C..U+001F, which Python also counts as whitespace.
fn skip_space(s: &str) -> &str {
    s.trim_start_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Python's `max(a, b)`: `b` only if strictly greater (the harness uses builtins).
fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// Python's `min(a, b)`: `b` only if strictly smaller.
fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

/// The harness's `compute_iou(gt, pred)`.
///
/// Each intersection side is clamped at 0, but box areas are not, so an
/// inverted prediction has a negative area and can make the union negative;
/// the result is then `-0.0`, as in the harness. A zero union (both boxes
/// degenerate, which also forces a zero intersection) makes Python raise
/// `ZeroDivisionError`; here it scores 0 so one bad row cannot abort a run.
/// So does a NaN union (areas that overflow: `inf * 0` for a box 1e308 wide
/// and flat, `inf - inf` for two such boxes), where Python's NaN would make
/// the mean IoU of the whole run NaN.
pub fn iou(gt: [f64; 4], pred: [f64; 4]) -> f64 {
    let x_left = py_max(gt[0], pred[0]);
    let y_top = py_max(gt[1], pred[1]);
    let x_right = py_min(gt[2], pred[2]);
    let y_bottom = py_min(gt[3], pred[3]);
    let intersection = py_max(0.0, x_right - x_left) * py_max(0.0, y_bottom - y_top);
    let gt_area = (gt[2] - gt[0]) * (gt[3] - gt[1]);
    let pred_area = (pred[2] - pred[0]) * (pred[3] - pred[1]);
    let union = gt_area + pred_area - intersection;
    if union == 0.0 || union.is_nan() {
        0.0
    } else {
        intersection / union
    }
}

/// The harness's `compute_center_accuracy(gt, pred)`: the centre of the
/// prediction lies inside the ground truth, edges included. Works on inverted
/// predictions too, since only their centre matters.
pub fn center_hit(gt: [f64; 4], pred: [f64; 4]) -> bool {
    let cx = (pred[0] + pred[2]) / 2.0;
    let cy = (pred[1] + pred[3]) / 2.0;
    gt[0] <= cx && cx <= gt[2] && gt[1] <= cy && cy <= gt[3]
}

/// One response's scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecRowScore {
    /// The parsed box; `None` when nothing parsed and the fallback was scored.
    pub parsed: Option<[f64; 4]>,
    pub iou: f64,
    /// `iou >= t` for each `t` in [`THRESHOLDS`].
    pub acc: [bool; 5],
    pub center: bool,
}

/// Scores `response` against the normalised ground-truth box `gt`.
pub fn score_row(response: &str, gt: [f64; 4]) -> RecRowScore {
    score_row_in(response, gt, None)
}

/// [`score_row`] for answers in pixels of a `pixel_frame` (width, height) image — Qwen2.5-VL answers in its
/// smart-resized frame — divided by its size first; `None`: answers already normalised.
pub fn score_row_in(response: &str, gt: [f64; 4], pixel_frame: Option<(f64, f64)>) -> RecRowScore {
    let parsed = parse_box(response);
    let scale = |b: [f64; 4]| match pixel_frame {
        Some((w, h)) => [b[0] / w, b[1] / h, b[2] / w, b[3] / h],
        None => b,
    };
    let pred = parsed.map(scale).unwrap_or(FALLBACK_BOX);
    let iou = iou(gt, pred);
    RecRowScore { parsed, iou, acc: THRESHOLDS.map(|t| iou >= t), center: center_hit(gt, pred) }
}

/// Means over rows, as the harness aggregates (`IoU`, `ACC@t`, `Center_ACC`).
#[derive(Debug, Clone, PartialEq)]
pub struct RecSummary {
    pub n: usize,
    pub iou: f64,
    /// Fraction of rows with `iou >= t`, in [`THRESHOLDS`] order.
    pub acc: [f64; 5],
    pub center: f64,
}

impl RecSummary {
    /// `{"n", "iou", "acc@0.1", …, "acc@0.9", "center"}`.
    pub fn to_json(&self) -> Value {
        let mut out = json!({ "n": self.n, "iou": self.iou, "center": self.center });
        for (t, acc) in THRESHOLDS.iter().zip(self.acc) {
            out[format!("acc@{t}")] = json!(acc);
        }
        out
    }
}

/// Aggregates rows; an empty slice gives `n = 0` and zeros rather than the
/// harness's division by zero.
pub fn summarize(rows: &[RecRowScore]) -> RecSummary {
    let n = rows.len();
    if n == 0 {
        return RecSummary { n, iou: 0.0, acc: [0.0; 5], center: 0.0 };
    }
    let mean_of = |hits: usize| hits as f64 / n as f64;
    // Plain left-to-right sum from +0.0, as Python's `sum()` (up to 3.11; 3.12
    // compensates, which can move the last bits).
    let iou_sum = rows.iter().fold(0.0, |sum, r| sum + r.iou);
    RecSummary {
        n,
        iou: iou_sum / n as f64,
        acc: std::array::from_fn(|i| mean_of(rows.iter().filter(|r| r.acc[i]).count())),
        center: mean_of(rows.iter().filter(|r| r.center).count()),
    }
}
