#![no_main]

use std::sync::LazyLock;

/// lmms-eval's `refcoco_bbox_rec` pattern, with `\d` as ASCII digits and `\s` as Python's (Unicode
/// whitespace plus U+001C..U+001F), as `nuwa::score::rec::parse_box` documents it.
static HARNESS: LazyLock<regex::Regex> = LazyLock::new(|| {
    let (n, s) = (r"(-?[0-9]+(?:\.[0-9]+)?)", r"[\s\x1C-\x1F]*");
    regex::Regex::new(&format!(r"\[{s}{n},{s}{n},{s}{n},{s}{n}{s}\]")).unwrap()
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nuwa::fuzzing::rec_answer(data);
    // Differential: the hand-written scanner against the regex it replaces.
    if let Ok(text) = std::str::from_utf8(data) {
        let expected = HARNESS.captures(text).and_then(|c| {
            let b: [f64; 4] = std::array::from_fn(|i| c[i + 1].parse().unwrap());
            b.iter().all(|v| v.is_finite()).then_some(b)
        });
        assert_eq!(nuwa::score::rec::parse_box(text), expected, "{text:?}");
    }
});
