//! Checks the REC scorer against rows scored by the lmms-eval harness rules,
//! plus hand-computed cases for the edges the fixture does not pin down.

use nuwa::score::rec::{
    center_hit, gt_box_from_coco, iou, parse_box, parse_box_or_zero, score_row, summarize, RecSummary, PROMPT_PREFIX,
    THRESHOLDS,
};
use serde_json::{json, Value};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/refcoco-scoring/rec_scoring.json");

fn fixture() -> Value {
    let text = std::fs::read_to_string(FIXTURE).unwrap_or_else(|e| panic!("reading {FIXTURE}: {e}"));
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn box4(v: &Value) -> [f64; 4] {
    let items = v.as_array().expect("box is an array");
    assert_eq!(items.len(), 4, "box {v}");
    std::array::from_fn(|i| items[i].as_f64().expect("box entry is a number"))
}

fn bits(b: [f64; 4]) -> [u64; 4] {
    b.map(f64::to_bits)
}

#[test]
fn prompt_prefix_matches_fixture() {
    assert_eq!(PROMPT_PREFIX, fixture()["prompt_prefix"].as_str().unwrap());
}

#[test]
fn every_fixture_row_scores_like_the_harness() {
    let fx = fixture();
    let rows = fx["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 60);
    for (i, row) in rows.iter().enumerate() {
        let response = row["response"].as_str().unwrap();
        let gt = box4(&row["gt"]);
        let want_parsed = box4(&row["parsed"]);
        let got = score_row(response, gt);
        let ctx = format!("row {i} {response:?}");

        // Bit equality also pins the sign of zeros.
        assert_eq!(bits(got.parsed.unwrap_or([0.0; 4])), bits(want_parsed), "{ctx} parsed");
        assert_eq!(bits(parse_box_or_zero(response)), bits(want_parsed), "{ctx} parsed");

        let want_iou = row["iou"].as_f64().unwrap();
        assert!((got.iou - want_iou).abs() <= 1e-9, "{ctx} iou {} vs {want_iou}", got.iou);
        if want_iou == 0.0 {
            // The harness yields -0.0 when an inverted prediction makes the union negative.
            assert_eq!(got.iou.is_sign_negative(), want_iou.is_sign_negative(), "{ctx} iou sign");
        }
        for (k, t) in THRESHOLDS.iter().enumerate() {
            let want = row[format!("acc@{t}")].as_bool().unwrap();
            assert_eq!(got.acc[k], want, "{ctx} acc@{t}");
        }
        assert_eq!(got.center, row["center"].as_bool().unwrap(), "{ctx} center");
    }
}

#[test]
fn fixture_aggregates_match() {
    let fx = fixture();
    let scored: Vec<_> = fx["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| score_row(r["response"].as_str().unwrap(), box4(&r["gt"])))
        .collect();
    let summary = summarize(&scored);
    let agg = &fx["aggregate"];
    let close = |got: f64, key: &str| {
        let want = agg[key].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-12, "{key}: {got} vs {want}");
    };
    assert_eq!(summary.n, 60);
    close(summary.iou, "IoU");
    for (k, t) in THRESHOLDS.iter().enumerate() {
        close(summary.acc[k], &format!("ACC@{t}"));
    }
    close(summary.center, "Center_ACC");

    let js = summary.to_json();
    assert_eq!(js["n"], json!(60));
    assert_eq!(js["iou"], json!(summary.iou));
    assert_eq!(js["acc@0.5"], json!(summary.acc[2]));
    assert_eq!(js["center"], json!(summary.center));
    assert_eq!(js.as_object().unwrap().len(), 8);
}

#[test]
fn parser_follows_the_harness_regex() {
    let b = [0.1, 0.2, 0.3, 0.4];
    assert_eq!(parse_box("[0.1,\t0.2,\n0.3,  0.4]"), Some(b));
    // Python's \s also covers U+001C..U+001F and Unicode spaces.
    assert_eq!(parse_box("[\u{1f}0.1,\u{a0}0.2, 0.3, 0.4\u{3000}]"), Some(b));
    // re.search keeps looking after a '[' that fails to match.
    assert_eq!(parse_box("[1, 2] then [0.1, 0.2, 0.3, 0.4]"), Some(b));
    assert_eq!(parse_box("[[0.1, 0.2, 0.3, 0.4]]"), Some(b));
    assert_eq!(parse_box("[-0, 1, 2, 3]").map(|b| b[0].is_sign_negative()), Some(true));
    for bad in [
        "[0.1, 0.2, 0.3, 0.4",
        "[0.1, 0.2, 0.3, 0.4, 0.5]",
        "[1., 2, 3, 4]",
        "[1e-1, 0.2, 0.3, 0.4]",
        "[+0.1, 0.2, 0.3, 0.4]",
        "[0.1, 0.2, 0.3 ,0.4]",
        "[0.1, 0.2, 0.3, 0.4 )",
    ] {
        assert_eq!(parse_box(bad), None, "{bad:?}");
        assert_eq!(parse_box_or_zero(bad), [0.0; 4], "{bad:?}");
    }
}

#[test]
fn hand_computed_iou() {
    let unit = [0.0, 0.0, 1.0, 1.0];
    assert_eq!(iou(unit, unit), 1.0);
    assert_eq!(iou(unit, [2.0, 2.0, 3.0, 3.0]), 0.0);
    // Half of each box overlaps: intersection 0.5, union 1.5.
    assert!((iou(unit, [0.5, 0.0, 1.5, 1.0]) - 1.0 / 3.0).abs() < 1e-15);
    // Touching edges intersect with zero area.
    assert_eq!(iou(unit, [1.0, 0.0, 2.0, 1.0]), 0.0);
    // Zero union would be 0/0 (Python raises); it scores 0, not NaN.
    assert_eq!(iou([0.0; 4], [0.0; 4]), 0.0);
    // Inverted prediction with more negative area than the ground truth's area.
    let neg = iou([0.0, 0.0, 0.1, 0.1], [0.9, 0.0, 0.1, 1.0]);
    assert!(neg == 0.0 && neg.is_sign_negative());
}

#[test]
fn center_is_inclusive_and_tests_prediction_in_ground_truth() {
    let unit = [0.0, 0.0, 1.0, 1.0];
    // Centre exactly on the corner (1, 1) counts.
    assert!(center_hit(unit, [0.5, 0.5, 1.5, 1.5]));
    assert!(!center_hit(unit, [0.5, 0.5, 1.5, 1.5 + 1e-9]));
    // Order matters: a big prediction around a small target misses.
    let small = [0.0, 0.0, 0.2, 0.2];
    assert!(center_hit(unit, small));
    assert!(!center_hit(small, unit));
    // Unparsed answers score the fallback box, whose centre is the origin.
    let row = score_row("no box", unit);
    assert_eq!(row.parsed, None);
    assert!(row.center);
    assert_eq!(row.iou, 0.0);
}

#[test]
fn empty_summary_is_zero() {
    let s = summarize(&[]);
    assert_eq!(s, RecSummary { n: 0, iou: 0.0, acc: [0.0; 5], center: 0.0 });
    assert_eq!(
        s.to_json(),
        json!({"n": 0, "iou": 0.0, "acc@0.1": 0.0, "acc@0.3": 0.0, "acc@0.5": 0.0,
               "acc@0.7": 0.0, "acc@0.9": 0.0, "center": 0.0})
    );
}

#[test]
fn coco_gt_is_normalised_corners() {
    assert_eq!(gt_box_from_coco([64.0, 48.0, 128.0, 96.0], 640.0, 480.0), [0.1, 0.1, 0.3, 0.3]);
}
