//! Open-ended VQA scoring as the standard harnesses do it (lmms-eval's `vqav2`, `textvqa`, `vizwiz_vqa`):
//! the EvalAI answer normalisation applied to the response and to every human answer, then the VQA soft
//! accuracy.
//!
//! Soft accuracy with `n ≥ 2` human answers is the official leave-one-out form: for each human answer i,
//! `min(1, #{j ≠ i : answer_j = response} / 3)`, averaged over i — i.e. `min(#matching / 3, 1)` averaged
//! over the n subsets of n − 1 answers (with 10 answers: 3 matches → 0.9, 4 or more → 1). With a single
//! reference answer (GQA-style datasets) the leave-one-out form would always give 0, so the score is the
//! exact match of the normalised strings.

use serde::Serialize;

/// The suffix LLaVA-1.5 (and lmms-eval's default prompts) append to short-answer questions.
pub const SHORT_ANSWER_SUFFIX: &str = "\nAnswer the question using a single word or phrase.";

/// The question for short-answer VQA: the question as given, then [`SHORT_ANSWER_SUFFIX`].
pub fn prompt(question: &str) -> String {
    format!("{}{SHORT_ANSWER_SUFFIX}", py_strip(question))
}

const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    // The three capitalised keys never match (words are lower-cased first); kept as in the harness.
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

const NUMBERS: &[(&str, &str)] = &[
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

const ARTICLES: &[&str] = &["a", "an", "the"];

const PUNCTUATIONS: &[char] =
    &[';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!'];

/// The harness's `PERIOD_STRIP.sub("", text, re.UNICODE)`: `re.UNICODE` (32) lands in `count`, so at
/// most 32 periods go.
const PERIOD_STRIP_COUNT: usize = 32;

/// Python's `str.isspace` for one character.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// EvalAI's answer normalisation (`EvalAIAnswerProcessor.__call__`), rule for rule: lower-case, drop
/// `,` and `?`, split off `'s`, strip punctuation (deleted when it touches a space, else replaced by one),
/// drop periods not followed by a digit, number words to digits, drop articles, restore contractions.
pub fn normalize(answer: &str) -> String {
    // word_tokenize
    let s = answer.to_lowercase().replace([',', '?'], "").replace("'s", " 's");
    let s = py_strip(&s).replace(['\n', '\t'], " ");
    let s = py_strip(&s);
    let s = process_punctuation(s);
    process_digit_article(&s)
}

/// `(?<=\d)(\,)+(?=\d)` found anywhere: a digit, one or more commas, a digit.
fn has_digit_comma_digit(s: &str) -> bool {
    let c: Vec<char> = s.chars().collect();
    (0..c.len()).any(|i| {
        if !is_digit(c[i]) {
            return false;
        }
        let mut j = i + 1;
        while j < c.len() && c[j] == ',' {
            j += 1;
        }
        j > i + 1 && j < c.len() && is_digit(c[j])
    })
}

/// Python's `\d`; ASCII only here (Python would also take other Unicode decimal digits, which models
/// do not emit).
fn is_digit(c: char) -> bool {
    c.is_ascii_digit()
}

fn process_punctuation(in_text: &str) -> String {
    let comma_strip = has_digit_comma_digit(in_text);
    let mut out = in_text.to_owned();
    for &p in PUNCTUATIONS {
        let touches_space = in_text.contains(&format!("{p} ")) || in_text.contains(&format!(" {p}"));
        out = if touches_space || comma_strip { out.replace(p, "") } else { out.replace(p, " ") };
    }
    // PERIOD_STRIP `(?!<=\d)(\.)(?!\d)`: the first look-ahead can never match at a '.', so this removes
    // each '.' not followed by a digit, judged on the text before any removal.
    let chars: Vec<char> = out.chars().collect();
    let mut removed = 0;
    let mut result = String::with_capacity(out.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == '.' && removed < PERIOD_STRIP_COUNT && !chars.get(i + 1).is_some_and(|&n| is_digit(n)) {
            removed += 1;
            continue;
        }
        result.push(c);
    }
    result
}

fn process_digit_article(in_text: &str) -> String {
    let lowered = in_text.to_lowercase();
    let words: Vec<&str> = lowered
        .split(py_space)
        .filter(|w| !w.is_empty())
        .map(|w| NUMBERS.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| v))
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| CONTRACTIONS.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| v))
        .collect();
    words.join(" ")
}

/// One response's scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VqaRowScore {
    /// The normalised response.
    pub pred: String,
    /// Soft accuracy (see the module docs), in [0, 1].
    pub accuracy: f64,
    /// The normalised response equals at least one normalised human answer.
    pub exact_match: bool,
}

/// Scores `response` against the human `answers` (at least one).
pub fn score_row(response: &str, answers: &[String]) -> VqaRowScore {
    let pred = normalize(response);
    let gts: Vec<String> = answers.iter().map(|a| normalize(a)).collect();
    let matches = gts.iter().filter(|g| **g == pred).count();
    let accuracy = match gts.len() {
        0 => 0.0,
        1 => f64::from(u8::from(matches == 1)),
        n => {
            // Σ_i min(3, matches among the others) / (3n): exact rational, rounded once.
            let credit: usize = gts.iter().map(|g| (matches - usize::from(*g == pred)).min(3)).sum();
            credit as f64 / (3 * n) as f64
        }
    };
    VqaRowScore { pred, accuracy, exact_match: matches > 0 }
}

/// Means over rows.
#[derive(Debug, Clone, PartialEq)]
pub struct VqaSummary {
    pub n: usize,
    pub accuracy: f64,
    pub exact_match: f64,
}

/// Aggregates `(accuracy, exact_match)` per row, summed in the order given.
pub fn summarize(rows: &[(f64, bool)]) -> VqaSummary {
    let n = rows.len();
    if n == 0 {
        return VqaSummary { n, accuracy: 0.0, exact_match: 0.0 };
    }
    let acc = rows.iter().fold(0.0, |s, r| s + r.0);
    let exact = rows.iter().filter(|r| r.1).count();
    VqaSummary { n, accuracy: acc / n as f64, exact_match: exact as f64 / n as f64 }
}
