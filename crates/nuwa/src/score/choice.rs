//! Multiple choice (ScienceQA, MMBench style) scored by the option letter, as lmms-eval's `scienceqa`
//! task (which follows LLaVA's own parser) does: the answer is right when the response is exactly the
//! letter, or starts with an upper-case letter and a period (`"B. a cat"`) and that letter is the right one.
//! Surrounding whitespace is ignored.

use serde::Serialize;

/// What LLaVA-1.5 (and lmms-eval's default prompts) ask after the options.
pub const LETTER_SUFFIX: &str = "\nAnswer with the option's letter from the given choices directly.";

/// The letter of option `i` (0 → `A`); at most 26 options.
pub fn letter(i: usize) -> char {
    assert!(i < 26, "at most 26 options");
    (b'A' + i as u8) as char
}

/// The question as the harness lays it out: `Context: {hint}\n` when there is a hint, the question, one
/// `A. …` line per option, then [`LETTER_SUFFIX`].
pub fn prompt(question: &str, choices: &[String], hint: Option<&str>) -> String {
    let context = match hint.map(str::trim) {
        Some(h) if !h.is_empty() => format!("Context: {h}\n"),
        _ => String::new(),
    };
    let options: Vec<String> = choices.iter().enumerate().map(|(i, c)| format!("{}. {c}", letter(i))).collect();
    format!("{context}{question}\n{}{LETTER_SUFFIX}", options.join("\n"))
}

/// The letter a response picks, by the harness's rule: the whole response is one letter, or it starts
/// with an upper-case letter followed by `.`. `None` when neither holds. (A lower-case letter is kept
/// as it is, so it never matches an option, as in the harness.)
pub fn parse_letter(response: &str) -> Option<char> {
    let r = response.trim();
    let mut chars = r.chars();
    let first = chars.next()?;
    match chars.next() {
        None if first.is_alphabetic() => Some(first),
        Some('.') if first.is_uppercase() => Some(first),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChoiceRow {
    /// The letter the response picks, if it picks one.
    pub pred: Option<char>,
    pub correct: bool,
}

/// Scores `response` against the right letter.
pub fn score_row(response: &str, answer: char) -> ChoiceRow {
    let pred = parse_letter(response);
    ChoiceRow { pred, correct: pred == Some(answer) }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceSummary {
    pub n: usize,
    pub accuracy: f64,
    /// Responses that pick no letter.
    pub unparsed: usize,
}

pub fn summarize(rows: &[ChoiceRow]) -> ChoiceSummary {
    let n = rows.len();
    let correct = rows.iter().filter(|r| r.correct).count();
    ChoiceSummary {
        n,
        accuracy: if n > 0 { correct as f64 / n as f64 } else { 0.0 },
        unparsed: rows.iter().filter(|r| r.pred.is_none()).count(),
    }
}
