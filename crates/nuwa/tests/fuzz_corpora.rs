//! Replays every committed fuzz input (the seeds and crash reproducers in `fuzz/corpus/<target>/`)
//! through the fuzz targets' own checks in `nuwa::fuzzing`, so CI keeps them passing without a fuzzer.

use std::path::{Path, PathBuf};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus");

/// A target's checks: return for a pass, panic for a bug.
type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 5] = [
    ("image", nuwa::fuzzing::image),
    ("safetensors_header", nuwa::fuzzing::safetensors_header),
    ("config", nuwa::fuzzing::config),
    ("manifest_line", nuwa::fuzzing::manifest_line),
    ("rec_answer", nuwa::fuzzing::rec_answer),
];

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let check = TARGETS.iter().find(|t| t.0 == target).unwrap().1;
    let files = inputs(&Path::new(CORPUS).join(target));
    assert!(!files.is_empty(), "no inputs for {target}");
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        // The panic hook has printed the failure; this names the input.
        if std::panic::catch_unwind(|| check(&bytes)).is_err() {
            panic!("{target} fails on {}", path.display());
        }
    }
}

#[test]
fn every_corpus_has_a_target() {
    let mut dirs: Vec<String> =
        std::fs::read_dir(CORPUS).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    dirs.sort();
    let mut targets: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
    targets.sort();
    assert_eq!(dirs, targets);
}

#[test]
fn image() {
    replay("image");
}

#[test]
fn safetensors_header() {
    replay("safetensors_header");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn manifest_line() {
    replay("manifest_line");
}

#[test]
fn rec_answer() {
    replay("rec_answer");
}
