//! Evaluation datasets: JSONL manifests and the Parquet files of the lmms-eval datasets, read into rows of
//! samples (one row = one image; a RefCOCO row holds several referring expressions, one sample each, as
//! the harness explodes them).
//!
//! Rows are numbered from 1 across all the files given, in order (for a manifest, the row number is the
//! line number). A row that cannot be used keeps its number and carries the reason instead of samples, so
//! every problem is reported with its row and the other rows keep their numbers.

use super::Task;
use crate::preprocess;
use crate::score::{choice, rec, vqa, yesno::YesNo};
use crate::{Error, Fnv1a, Result};
use image::RgbImage;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::{Field, Row as PqRow};
use parquet::schema::types::Type;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One question about an image, with what a right answer is.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Index of the sample within its row (the n-th referring expression of a RefCOCO row; else 0).
    pub sub: usize,
    /// The dataset's id (`id`, else `question_id`, else the row number).
    pub id: String,
    /// The question as the model is asked it (task prompt included), before the conversation template.
    pub prompt: String,
    pub truth: Truth,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Truth {
    /// `bbox`: COCO `[x, y, w, h]` in pixels of the original image.
    Rec {
        expression: String,
        bbox: [f64; 4],
    },
    /// Human answers (one or more).
    Vqa {
        answers: Vec<String>,
    },
    YesNo(YesNo),
    /// The right option's letter.
    Choice {
        answer: char,
        n_choices: usize,
    },
}

/// Where a row's image is.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// A file (a manifest's `image`, resolved against the manifest's folder).
    Path(PathBuf),
    /// The `image` cell of the row's Parquet file, read when the row runs.
    ParquetCell,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    Manifest,
    Parquet,
}

#[derive(Debug, Clone)]
pub struct DataFile {
    pub path: PathBuf,
    pub kind: FileKind,
}

/// One row of a data file.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based, across all files.
    pub row: usize,
    /// Index into [`Dataset::files`].
    pub file: usize,
    /// 1-based line (manifest) or row (Parquet) within its file.
    pub local: usize,
    pub image: Option<ImageSource>,
    /// The row's samples, or why it has none (the message names the file and the line or row).
    pub samples: std::result::Result<Vec<Sample>, String>,
    /// Of the row as stored (the manifest line, the Parquet record but its image): with the image's,
    /// it tells whether an answer on file still answers this row.
    pub hash: u64,
}

pub struct Dataset {
    pub files: Vec<DataFile>,
    pub rows: Vec<Row>,
}

impl Dataset {
    /// Rewrites every REC sample's question as `ask` phrases it for its expression (the model family's
    /// grounding prompt; the harness's LLaVA question otherwise).
    pub fn ask_rec_as(&mut self, ask: impl Fn(&str) -> String) {
        for s in self.rows.iter_mut().filter_map(|r| r.samples.as_mut().ok()).flatten() {
            if let Truth::Rec { expression, .. } = &s.truth {
                s.prompt = ask(expression);
            }
        }
    }

    /// Reads every file (a folder stands for its `*.jsonl` and `*.parquet` files, sorted by name).
    /// Unreadable files and Parquet files without the columns `task` needs are errors; problems with
    /// single rows are recorded in those rows.
    pub fn open(paths: &[PathBuf], task: Task) -> Result<Self> {
        if paths.is_empty() {
            return Err(Error::invalid("data", "needs at least one manifest (.jsonl) or Parquet file"));
        }
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(|e| Error::io(p, format!("cannot list the folder: {e}")))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| kind_of(f).is_some())
                    .collect();
                found.sort();
                if found.is_empty() {
                    return Err(Error::io(p, "the folder holds no .jsonl or .parquet files"));
                }
                files.extend(found);
            } else {
                files.push(p.clone());
            }
        }
        let mut out = Dataset { files: Vec::new(), rows: Vec::new() };
        let mut offset = 0;
        for path in files {
            let kind = kind_of(&path).ok_or_else(|| {
                Error::io(
                    &path,
                    "unknown data file type: expected a JSONL manifest (.jsonl) or a Parquet file (.parquet)",
                )
            })?;
            let index = out.files.len();
            let count = match kind {
                FileKind::Manifest => read_manifest(&path, task, index, offset, &mut out.rows)?,
                FileKind::Parquet => read_parquet(&path, task, index, offset, &mut out.rows)?,
            };
            offset += count;
            out.files.push(DataFile { path, kind });
        }
        Ok(out)
    }

    /// `FILE line N` or `FILE row N`, for messages.
    pub fn locate(&self, row: &Row) -> String {
        let f = &self.files[row.file];
        locate(&f.path, &f.kind, row.local)
    }
}

fn locate(path: &Path, kind: &FileKind, local: usize) -> String {
    match kind {
        FileKind::Manifest => format!("{} line {local}", path.display()),
        FileKind::Parquet => format!("{} row {local}", path.display()),
    }
}

fn kind_of(path: &Path) -> Option<FileKind> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "jsonl" | "ndjson" => Some(FileKind::Manifest),
        "parquet" => Some(FileKind::Parquet),
        _ => None,
    }
}

/// Reads a manifest's lines into `rows`; returns its number of lines. Blank lines are no rows.
fn read_manifest(path: &Path, task: Task, file: usize, offset: usize, rows: &mut Vec<Row>) -> Result<usize> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, format!("cannot read the manifest: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut n = 0;
    let lines = bytes.strip_suffix(b"\n").unwrap_or(&bytes).split(|&b| b == b'\n');
    for (i, raw) in lines.enumerate().filter(|_| !bytes.is_empty()) {
        n = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let row = offset + n;
        let at = locate(path, &FileKind::Manifest, n);
        // A line that is not UTF-8 is reported, not read with replacement characters.
        let line = match std::str::from_utf8(raw) {
            Ok(l) if l.trim().is_empty() => continue,
            Ok(l) => Ok(l),
            Err(e) => Err(format!("{at}: not valid UTF-8 (at byte {} of the line)", e.valid_up_to())),
        };
        let parsed = match line.map(serde_json::from_str::<Value>) {
            Err(msg) => Err(msg),
            Ok(Ok(Value::Object(obj))) => Ok(obj),
            Ok(Ok(other)) => Err(format!("{at}: expected a JSON object, got {}", kind_name(&other))),
            Ok(Err(e)) => Err(format!("{at}: not valid JSON ({e})")),
        };
        let (image, samples) = match parsed {
            Err(msg) => (None, Err(msg)),
            Ok(obj) => {
                let image = match obj.get("image") {
                    Some(Value::String(s)) if !s.trim().is_empty() => Ok(ImageSource::Path(base.join(s))),
                    None | Some(Value::Null) => {
                        Err(format!("{at}: field `image` is missing (a path relative to the manifest)"))
                    }
                    Some(other) => {
                        Err(format!("{at}: field `image`: expected a path (string), got {}", kind_name(other)))
                    }
                };
                match image {
                    Ok(img) => (Some(img), samples_of(task, &obj, row).map_err(|m| format!("{at}: {m}"))),
                    Err(m) => (None, Err(m)),
                }
            }
        };
        rows.push(Row { row, file, local: n, image, samples, hash: Fnv1a::of(raw) });
    }
    Ok(n)
}

fn open_parquet(path: &Path) -> Result<SerializedFileReader<std::fs::File>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, format!("cannot open the Parquet file: {e}")))?;
    SerializedFileReader::new(f).map_err(|e| Error::io(path, format!("not a readable Parquet file: {e}")))
}

/// The root schema with only the top-level columns `keep` says yes to.
fn projection(reader: &SerializedFileReader<std::fs::File>, keep: impl Fn(&str) -> bool) -> Result<Type> {
    let schema = reader.metadata().file_metadata().schema();
    let fields: Vec<Arc<Type>> = schema.get_fields().iter().filter(|f| keep(f.name())).cloned().collect();
    Type::group_type_builder(schema.name())
        .with_fields(fields)
        .build()
        .map_err(|e| Error::Unsupported(format!("cannot project the Parquet schema: {e}")))
}

/// Reads a Parquet file's rows (every column but the image) into `rows`; returns its number of rows.
fn read_parquet(path: &Path, task: Task, file: usize, offset: usize, rows: &mut Vec<Row>) -> Result<usize> {
    let reader = open_parquet(path)?;
    let total = usize::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0);
    let columns: Vec<String> =
        reader.metadata().file_metadata().schema().get_fields().iter().map(|f| f.name().to_owned()).collect();
    let has = |c: &str| columns.iter().any(|n| n == c);
    let missing: Vec<&str> = required_columns(task).iter().copied().filter(|alts| !alts.split('|').any(has)).collect();
    if !has("image") || !missing.is_empty() {
        let mut need: Vec<String> = missing.iter().map(|m| format!("`{}`", m.replace('|', "` or `"))).collect();
        if !has("image") {
            need.insert(0, "`image`".into());
        }
        return Err(Error::config(
            path,
            format!(
                "a {} dataset needs the column(s) {}; this file has {}",
                task.name(),
                need.join(", "),
                columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let proj = projection(&reader, |name| name != "image")?;
    let iter = RowIter::from_file_into(Box::new(reader))
        .project(Some(proj))
        .map_err(|e| Error::io(path, format!("cannot read the Parquet rows: {e}")))?;
    let mut read = 0;
    for item in iter {
        read += 1;
        let at = locate(path, &FileKind::Parquet, read);
        let (samples, hash) = match item {
            Ok(r) => {
                let obj = row_to_json(&r);
                let hash = Fnv1a::of(Value::Object(obj.clone()).to_string().as_bytes());
                (samples_of(task, &obj, offset + read).map_err(|m| format!("{at}: {m}")), hash)
            }
            Err(e) => {
                // The rest of the file cannot be read: every remaining row gets the message.
                let msg = format!("{at}: cannot read the row ({e})");
                for k in read..=total.max(read) {
                    let samples = Err(msg.clone());
                    rows.push(Row { row: offset + k, file, local: k, image: None, samples, hash: 0 });
                }
                return Ok(total.max(read));
            }
        };
        let image = Some(ImageSource::ParquetCell);
        rows.push(Row { row: offset + read, file, local: read, image, samples, hash });
    }
    Ok(read.max(total))
}

/// Top-level columns a Parquet file must have per task (`a|b`: either).
fn required_columns(task: Task) -> &'static [&'static str] {
    match task {
        Task::Rec => &["expression|answer", "bbox"],
        Task::Vqa => &["question", "answers|answer"],
        Task::Yesno => &["question", "answer"],
        Task::Choice => &["question", "answer", "choices|A"],
    }
}

/// A Parquet record as JSON (binary cells that are not UTF-8 become null; the image is read apart).
pub fn row_to_json(row: &PqRow) -> Map<String, Value> {
    row.get_column_iter().map(|(k, f)| (k.clone(), field_to_json(f))).collect()
}

fn field_to_json(f: &Field) -> Value {
    use serde_json::Number;
    let float = |x: f64| Number::from_f64(x).map_or(Value::Null, Value::Number);
    match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float16(x) => float(f64::from(*x)),
        Field::Float(x) => float(f64::from(*x)),
        Field::Double(x) => float(*x),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => std::str::from_utf8(b.data()).map_or(Value::Null, |s| Value::String(s.to_owned())),
        Field::Group(r) => Value::Object(row_to_json(r)),
        Field::ListInternal(l) => Value::Array(l.elements().iter().map(field_to_json).collect()),
        Field::MapInternal(m) => Value::Object(
            m.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match field_to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, field_to_json(v))
                })
                .collect(),
        ),
        // Dates, times and decimals carry nothing a task reads.
        _ => Value::String(f.to_string()),
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The value of `key` unless it is absent or null.
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn string(obj: &Map<String, Value>, key: &str, what: &str) -> std::result::Result<String, String> {
    match get(obj, key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(format!("field `{key}` is empty ({what})")),
        Some(other) => Err(format!("field `{key}`: expected {what} (a string), got {}", kind_name(other))),
        None => Err(format!("field `{key}` is missing ({what})")),
    }
}

/// A string, a number, or a list of them (list items may also be `{"answer": …}`, as in VQAv2).
fn strings(v: &Value, key: &str) -> std::result::Result<Vec<String>, String> {
    let one = |v: &Value| -> std::result::Result<String, String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(if *b { "yes" } else { "no" }.into()),
            Value::Object(o) => match o.get("answer") {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(format!("field `{key}`: list items must be strings or {{\"answer\": string}}")),
            },
            other => Err(format!("field `{key}`: expected a string or a list of strings, found {}", kind_name(other))),
        }
    };
    let out = match v {
        Value::Array(items) => {
            items.iter().filter(|v| !v.is_null()).map(one).collect::<std::result::Result<Vec<_>, _>>()?
        }
        other => vec![one(other)?],
    };
    if out.iter().all(|s| s.trim().is_empty()) {
        return Err(format!("field `{key}` holds no non-empty answer"));
    }
    Ok(out)
}

fn sample_id(obj: &Map<String, Value>, row: usize) -> String {
    for key in ["id", "question_id"] {
        match get(obj, key) {
            Some(Value::String(s)) if !s.is_empty() => return s.clone(),
            Some(Value::Number(n)) => return n.to_string(),
            _ => {}
        }
    }
    row.to_string()
}

/// The samples of one record (manifest object or Parquet row), or what is wrong with it.
pub fn samples_of(task: Task, obj: &Map<String, Value>, row: usize) -> std::result::Result<Vec<Sample>, String> {
    let id = sample_id(obj, row);
    let one = |prompt: String, truth: Truth| Ok(vec![Sample { sub: 0, id: id.clone(), prompt, truth }]);
    match task {
        Task::Rec => {
            // Manifests name it `expression`; the lmms-eval RefCOCO files keep the expressions in `answer`.
            let (key, v) = match (get(obj, "expression"), get(obj, "answer")) {
                (Some(v), _) => ("expression", v),
                (None, Some(v)) => ("answer", v),
                (None, None) => return Err("field `expression` is missing (the referring expression)".into()),
            };
            let expressions: Vec<String> = strings(v, key)?.into_iter().filter(|s| !s.trim().is_empty()).collect();
            let bbox = coco_box(get(obj, "bbox"))?;
            Ok(expressions
                .into_iter()
                .enumerate()
                .map(|(sub, expression)| Sample {
                    sub,
                    id: id.clone(),
                    prompt: format!("{}{expression}", rec::PROMPT_PREFIX),
                    truth: Truth::Rec { expression, bbox },
                })
                .collect())
        }
        Task::Vqa => {
            let question = string(obj, "question", "the question")?;
            let (key, v) = match (get(obj, "answers"), get(obj, "answer")) {
                (Some(v), _) => ("answers", v),
                (None, Some(v)) => ("answer", v),
                (None, None) => return Err("field `answers` (or `answer`) is missing".into()),
            };
            one(vqa::prompt(&question), Truth::Vqa { answers: strings(v, key)? })
        }
        Task::Yesno => {
            let question = string(obj, "question", "the question")?;
            let answer = match get(obj, "answer") {
                Some(Value::String(s)) => {
                    YesNo::parse(s).ok_or_else(|| format!("field `answer`: expected \"yes\" or \"no\", got {s:?}"))?
                }
                Some(Value::Bool(b)) => {
                    if *b {
                        YesNo::Yes
                    } else {
                        YesNo::No
                    }
                }
                Some(other) => {
                    return Err(format!("field `answer`: expected \"yes\" or \"no\", got {}", kind_name(other)))
                }
                None => return Err("field `answer` is missing (\"yes\" or \"no\")".into()),
            };
            one(vqa::prompt(&question), Truth::YesNo(answer))
        }
        Task::Choice => {
            let question = string(obj, "question", "the question")?;
            // ScienceQA: a `choices` list and `Context: {hint}`; MMBench: columns A, B, C, … and the hint
            // on its own line.
            let (choices, mmbench) = match get(obj, "choices") {
                Some(v @ Value::Array(_)) => (strings(v, "choices")?, false),
                Some(other) => {
                    return Err(format!("field `choices`: expected a list of strings, got {}", kind_name(other)))
                }
                None => {
                    let letters: Vec<String> = (0..26)
                        .map(choice::letter)
                        .map_while(|l| match get(obj, &l.to_string()) {
                            Some(Value::String(s)) if !s.trim().is_empty() && s != "nan" => Some(s.clone()),
                            _ => None,
                        })
                        .collect();
                    if letters.is_empty() {
                        return Err("field `choices` is missing (a list of option texts)".into());
                    }
                    (letters, true)
                }
            };
            if choices.len() < 2 || choices.len() > 26 {
                return Err(format!("field `choices`: expected 2 to 26 options, got {}", choices.len()));
            }
            let answer = choice_answer(get(obj, "answer"), &choices)?;
            let hint = match get(obj, "hint") {
                Some(Value::String(h)) if !h.trim().is_empty() && h != "nan" => Some(h.as_str()),
                _ => None,
            };
            let prompt = match (mmbench, hint) {
                (true, Some(h)) => choice::prompt(&format!("{h}\n{question}"), &choices, None),
                _ => choice::prompt(&question, &choices, hint),
            };
            one(prompt, Truth::Choice { answer, n_choices: choices.len() })
        }
    }
}

/// The right option as a letter: given as a letter, a 0-based index, or the option's text.
fn choice_answer(v: Option<&Value>, choices: &[String]) -> std::result::Result<char, String> {
    let n = choices.len();
    let last = choice::letter(n - 1);
    match v {
        Some(Value::Number(k)) => match k.as_u64() {
            Some(i) if (i as usize) < n => Ok(choice::letter(i as usize)),
            _ => Err(format!("field `answer`: option index {k} is out of range for {n} choices (0 to {})", n - 1)),
        },
        Some(Value::String(s)) => {
            let t = s.trim();
            let mut cs = t.chars();
            match (cs.next(), cs.next()) {
                (Some(c), None) if c.is_ascii_uppercase() && c <= last => Ok(c),
                _ => match choices.iter().position(|c| c.trim() == t) {
                    Some(i) => Ok(choice::letter(i)),
                    None => {
                        Err(format!("field `answer`: {s:?} is neither a letter A to {last} nor one of the choices"))
                    }
                },
            }
        }
        Some(other) => Err(format!("field `answer`: expected a letter or an option index, got {}", kind_name(other))),
        None => Err("field `answer` is missing (the right option's letter)".into()),
    }
}

fn coco_box(v: Option<&Value>) -> std::result::Result<[f64; 4], String> {
    let err = || "field `bbox`: expected 4 numbers [x, y, width, height] in pixels (COCO style)".to_string();
    let items = match v {
        Some(Value::Array(a)) if a.len() == 4 => a,
        None => return Err("field `bbox` is missing ([x, y, width, height] in pixels)".into()),
        Some(_) => return Err(err()),
    };
    let mut out = [0.0; 4];
    for (o, i) in out.iter_mut().zip(items) {
        *o = i.as_f64().filter(|x| x.is_finite()).ok_or_else(err)?;
    }
    if !(out[2] > 0.0 && out[3] > 0.0) {
        return Err(format!("field `bbox`: width and height must be positive (a box with area), got {out:?}"));
    }
    // Corners and area must be finite too: [1e308, 2, 1e308, 4] would make an infinite box.
    if !(out[0] + out[2]).is_finite() || !(out[1] + out[3]).is_finite() || !(out[2] * out[3]).is_finite() {
        return Err(format!(
            "field `bbox`: {out:?} overflows (x + width, y + height or width × height is not a finite number)"
        ));
    }
    Ok(out)
}

/// How far a ground-truth box may reach past the image's edges: annotation tools round.
const BOX_SLACK_PX: f64 = 1.0;

/// Checks a row's ground-truth boxes against its image (`width` × `height` pixels).
pub fn fits_image(samples: &[Sample], width: u32, height: u32) -> std::result::Result<(), String> {
    let (w, h) = (f64::from(width), f64::from(height));
    for s in samples {
        if let Truth::Rec { bbox: b @ [x, y, bw, bh], .. } = s.truth {
            let inside =
                x >= -BOX_SLACK_PX && y >= -BOX_SLACK_PX && x + bw <= w + BOX_SLACK_PX && y + bh <= h + BOX_SLACK_PX;
            if !inside {
                return Err(format!(
                    "field `bbox`: {b:?} (x, y, width, height) lies outside the {width}×{height} image"
                ));
            }
        }
    }
    Ok(())
}

/// Reads row images in order, keeping one Parquet file open at a time.
pub struct ImageReader {
    open: Option<OpenParquet>,
}

struct OpenParquet {
    file: usize,
    iter: RowIter<'static>,
    /// 1-based number of the row the iterator returns next.
    next: usize,
    /// Set once the file cannot be read further.
    broken: Option<String>,
}

impl Default for ImageReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageReader {
    pub fn new() -> Self {
        Self { open: None }
    }

    /// The image of `row` as 8-bit RGB with the fingerprint of its encoded bytes, or a message naming the
    /// row. Parquet rows must be asked for in increasing order within a file.
    pub fn load(&mut self, data: &Dataset, row: &Row) -> std::result::Result<(RgbImage, u64), String> {
        let (bytes, what) = self.bytes(data, row)?;
        let image = preprocess::decode_image(&bytes, &what).map_err(|e| format!("{}: {e}", data.locate(row)))?;
        Ok((image, Fnv1a::of(&bytes)))
    }

    /// The encoded image of `row` and what to call it in messages.
    pub fn bytes(&mut self, data: &Dataset, row: &Row) -> std::result::Result<(Vec<u8>, String), String> {
        let at = data.locate(row);
        let file = &data.files[row.file];
        let read = |p: &Path| match preprocess::read_image_file(p) {
            Ok(b) => Ok((b, p.display().to_string())),
            Err(e) => Err(format!("{at}: {e}")),
        };
        let beside = |p: &str| file.path.parent().unwrap_or(Path::new("")).join(p);
        let in_cell = |b: &[u8]| Ok((b.to_vec(), "in the `image` column".to_string()));
        match &row.image {
            None => Err(format!("{at}: no image")),
            Some(ImageSource::Path(p)) => read(p),
            Some(ImageSource::ParquetCell) => {
                match self.parquet_cell(&file.path, row.file, row.local).map_err(|m| format!("{at}: {m}"))? {
                    Field::Bytes(b) => in_cell(b.data()),
                    Field::Str(p) => read(&beside(&p)),
                    Field::Group(g) => {
                        let mut bytes = None;
                        let mut path = None;
                        for (k, v) in g.get_column_iter() {
                            match (k.as_str(), v) {
                                ("bytes", Field::Bytes(b)) => bytes = Some(b),
                                ("path", Field::Str(p)) => path = Some(p),
                                _ => {}
                            }
                        }
                        match (bytes, path) {
                            (Some(b), _) => in_cell(b.data()),
                            (None, Some(p)) => read(&beside(p)),
                            (None, None) => Err(format!("{at}: the `image` cell has neither `bytes` nor `path`")),
                        }
                    }
                    Field::Null => Err(format!("{at}: the `image` cell is empty")),
                    other => Err(format!("{at}: the `image` cell is not an image (bytes or {{bytes, path}}): {other}")),
                }
            }
        }
    }

    fn parquet_cell(&mut self, path: &Path, file: usize, local: usize) -> std::result::Result<Field, String> {
        if self.open.as_ref().is_none_or(|o| o.file != file || o.next > local) {
            let reader = open_parquet(path).map_err(|e| e.to_string())?;
            let proj = projection(&reader, |name| name == "image").map_err(|e| e.to_string())?;
            let iter = RowIter::from_file_into(Box::new(reader))
                .project(Some(proj))
                .map_err(|e| format!("cannot read the `image` column: {e}"))?
                // Images are large: buffer a few rows, not the default thousand.
                .with_batch_size(8);
            self.open = Some(OpenParquet { file, iter, next: 1, broken: None });
        }
        let open = self.open.as_mut().expect("opened above");
        if let Some(msg) = &open.broken {
            return Err(msg.clone());
        }
        loop {
            let item = open.iter.next();
            open.next += 1;
            match item {
                None => {
                    open.broken = Some("the file has fewer rows than its metadata says".into());
                    return Err(open.broken.clone().unwrap());
                }
                Some(Err(e)) => {
                    open.broken = Some(format!("cannot read the `image` column: {e}"));
                    return Err(open.broken.clone().unwrap());
                }
                Some(Ok(r)) if open.next - 1 == local => {
                    return Ok(r.into_columns().into_iter().next().map_or(Field::Null, |(_, f)| f));
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
