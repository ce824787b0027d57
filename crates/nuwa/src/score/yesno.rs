//! Yes/no questions (POPE) scored as lmms-eval's `pope` task does: the response lower-cased and stripped
//! must equal `yes` or `no` exactly; accuracy over every row, precision and recall over the rows whose
//! response is exactly `yes` or `no`.
//!
//! As in the harness, a response that is neither (`"Yes."`, `"There is"`) counts as wrong for accuracy
//! and as neither a positive nor a negative for precision and recall: with the positive class `yes`,
//! precision = TP / (TP + FP) with FP = (truth `no`, answered `yes`), recall = TP / (TP + FN) with
//! FN = (truth `yes`, answered `no`). Empty denominators give 0.

use serde::{Deserialize, Serialize};

/// The ground truth of a yes/no question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum YesNo {
    Yes,
    No,
}

impl YesNo {
    /// `yes` / `no` in any case, surrounded by any whitespace.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_lowercase().as_str() {
            "yes" => Some(Self::Yes),
            "no" => Some(Self::No),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Yes => "yes",
            Self::No => "no",
        }
    }
}

/// One response, as the harness sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct YesNoRow {
    /// The response lower-cased and stripped.
    pub pred: String,
    pub truth: YesNo,
    pub correct: bool,
}

/// Scores `response` against `truth`.
pub fn score_row(response: &str, truth: YesNo) -> YesNoRow {
    let pred = response.to_lowercase().trim().to_owned();
    let correct = pred == truth.as_str();
    YesNoRow { pred, truth, correct }
}

#[derive(Debug, Clone, PartialEq)]
pub struct YesNoSummary {
    pub n: usize,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Share of responses that are exactly `yes` (POPE's bias indicator).
    pub yes_ratio: f64,
    /// Responses that are neither `yes` nor `no`.
    pub unparsed: usize,
}

pub fn summarize(rows: &[YesNoRow]) -> YesNoSummary {
    let n = rows.len();
    let count = |f: &dyn Fn(&YesNoRow) -> bool| rows.iter().filter(|r| f(r)).count();
    let tp = count(&|r| r.truth == YesNo::Yes && r.pred == "yes");
    let fp = count(&|r| r.truth == YesNo::No && r.pred == "yes");
    let fn_ = count(&|r| r.truth == YesNo::Yes && r.pred == "no");
    let ratio = |a: usize, b: usize| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    let f1 = if precision + recall > 0.0 { 2.0 * (precision * recall) / (precision + recall) } else { 0.0 };
    YesNoSummary {
        n,
        accuracy: ratio(count(&|r| r.correct), n),
        precision,
        recall,
        f1,
        yes_ratio: ratio(count(&|r| r.pred == "yes"), n),
        unparsed: count(&|r| r.pred != "yes" && r.pred != "no"),
    }
}
