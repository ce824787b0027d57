//! `nuwa score`: score saved answers.

use anyhow::{Context, Result};
use nuwa::score::rec;
use std::io::BufRead;
use std::path::Path;

pub fn rec(path: &Path, as_json: bool) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: cannot read line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("{}: not JSON", at()))?;
        let response = v["response"].as_str().with_context(|| format!("{}: missing string field `response`", at()))?;
        let bbox: [f64; 4] = serde_json::from_value(v["bbox"].clone())
            .with_context(|| format!("{}: field `bbox` must be [x1, y1, x2, y2] (normalised numbers)", at()))?;
        let [x1, y1, x2, y2] = bbox;
        anyhow::ensure!(
            bbox.iter().all(|v| v.is_finite()) && x2 > x1 && y2 > y1,
            "{}: field `bbox` {bbox:?} must be finite with x2 > x1 and y2 > y1 (a box with area)",
            at()
        );
        let frame = match v.get("pixel_frame") {
            None | Some(serde_json::Value::Null) => None,
            Some(f) => {
                let [w, h]: [f64; 2] = serde_json::from_value(f.clone())
                    .ok()
                    .filter(|[w, h]: &[f64; 2]| w.is_finite() && h.is_finite() && *w >= 1.0 && *h >= 1.0)
                    .with_context(|| {
                        format!("{}: field `pixel_frame` must be [width, height] in pixels (at least 1 each)", at())
                    })?;
                Some((w, h))
            }
        };
        rows.push(rec::score_row_in(response, bbox, frame));
    }
    anyhow::ensure!(!rows.is_empty(), "{}: no predictions to score (the file has no rows)", path.display());
    let summary = rec::summarize(&rows);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&summary.to_json())?);
    } else {
        println!("n        {}", summary.n);
        println!("IoU      {:.4}", summary.iou);
        for (t, acc) in rec::THRESHOLDS.iter().zip(summary.acc) {
            println!("Acc@{t:<4} {acc:.4}");
        }
        println!("centre   {:.4}", summary.center);
    }
    Ok(())
}
