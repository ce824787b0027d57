//! The decoding session: stepping reproduces the golden greedy answer, stop strings cut the text where
//! they begin (and never stream their start), cancellation stops at once, and a method that needs
//! evidence a model does not give fails with a message naming both.
mod common;
use common::*;
use nuwa::prune::visionzip::VisionZip;
use nuwa::{Error, GenerateRequest, ImageInput, Method, Sampling, SessionOptions, StopReason};

fn request(max_new_tokens: usize, stop: Vec<String>) -> GenerateRequest {
    GenerateRequest {
        prompt: QUESTION.into(),
        image: Some(ImageInput::Pixels(g("pixel_values").clone())),
        method: Method::NONE,
        positions: None,
        sampling: Sampling::default(),
        max_new_tokens,
        stop,
    }
}

fn golden_text() -> String {
    golden_json()["runs"]["unpruned"]["text"].as_str().unwrap().trim_start().to_owned()
}

#[test]
fn stepping_yields_the_golden_greedy_tokens_and_text() {
    let e = engine();
    let state = e.prefill(&request(8, vec![])).unwrap();
    let mut session =
        e.session(state, &Sampling::default(), SessionOptions { max_new_tokens: 8, ..Default::default() }).unwrap();
    let (mut tokens, mut streamed) = (Vec::new(), String::new());
    while let Some(step) = session.step().unwrap() {
        tokens.push(step.token);
        streamed.push_str(&step.text);
    }
    assert_eq!(session.stop_reason(), Some(StopReason::Length));
    streamed.push_str(&session.pending_text());
    let generation = session.finish();
    assert_eq!(tokens, ids("unpruned.greedy"));
    assert_eq!(generation.tokens, tokens);
    assert_eq!(streamed, generation.text);
    assert_eq!(generation.text, golden_text());
}

#[test]
fn a_stop_string_ends_the_answer_before_it() {
    let full = golden_text();
    // A stop string that starts mid-answer (at a character boundary past the first token's text).
    let at = full.char_indices().map(|(i, _)| i).find(|&i| i >= full.len() / 2).unwrap();
    let stop: String = full[at..].chars().take(3).collect();
    let expected = &full[..full.find(&stop).unwrap()];
    let mut streamed = String::new();
    let generation = engine().generate(&request(8, vec![stop.clone()]), &mut |piece| streamed.push_str(piece)).unwrap();
    assert_eq!(generation.stop_reason, StopReason::Stop);
    assert_eq!(generation.text, expected);
    assert_eq!(streamed, expected, "the stream never shows the stop string or a start of it");
    assert!(generation.tokens.len() < 8);
    // A stop string that never appears changes nothing.
    let unmatched = engine().generate(&request(8, vec!["never in this answer".into()]), &mut |_| {}).unwrap();
    assert_eq!((unmatched.text, unmatched.stop_reason), (full, StopReason::Length));
}

#[test]
fn cancelling_stops_at_once() {
    let e = engine();
    let state = e.prefill(&request(8, vec![])).unwrap();
    let mut session =
        e.session(state, &Sampling::default(), SessionOptions { max_new_tokens: 8, ..Default::default() }).unwrap();
    session.step().unwrap().unwrap();
    session.step().unwrap().unwrap();
    session.cancel();
    assert!(session.step().unwrap().is_none());
    let generation = session.finish();
    assert_eq!(generation.stop_reason, StopReason::Cancelled);
    assert_eq!(generation.tokens, ids("unpruned.greedy")[..2]);
}

#[test]
fn bad_session_options_name_their_field() {
    let e = engine();
    for (opts, field) in [
        (SessionOptions { max_new_tokens: 0, ..Default::default() }, "max_new_tokens"),
        (SessionOptions { stop: vec![String::new()], ..Default::default() }, "stop"),
    ] {
        let state = e.prefill(&request(1, vec![])).unwrap();
        let err = e.session(state, &Sampling::default(), opts).err().expect("refused");
        assert_eq!(err.field(), Some(field), "{err}");
    }
}

#[test]
fn a_method_needing_missing_evidence_names_it() {
    let e = engine();
    let mut evidence = e.encode_vision(g("pixel_values"), None, Default::default()).unwrap();
    evidence.summary = None;
    let err = e.reduce(&evidence, &Method::VisionZip(VisionZip { budget: 64 })).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("visionzip") && msg.contains("[CLS]") && msg.contains("llava-1.5"), "{msg}");
}

/// Reserving room for an answer keeps what is cached and leaves that room in every layer, so decoding
/// appends in place (a layer without room is regrown: copied into one twice its size, mid-decode).
#[test]
fn reserving_room_in_the_cache_keeps_it_and_decoding_fills_it_in_place() {
    let e = engine();
    let state = e.prefill(&request(8, vec![])).unwrap();
    let mut reserved = state.cache.clone();
    reserved.reserve(4).unwrap();
    assert_eq!(reserved.layer_lengths(), state.cache.layer_lengths());
    assert_eq!(reserved.bytes(), state.cache.bytes());
    assert!(reserved.room().iter().all(|&r| r >= 4), "room {:?}", reserved.room());
    // One generated token through both caches: the same logits, and the reserved one used its room.
    let token = ids("unpruned.greedy")[0];
    let embeds = e.decoder().embed(&[token]).unwrap();
    let at = nuwa::layout::Positions::Linear(vec![state.next_position]);
    let mut unreserved = state.cache.clone();
    let want = e.decoder().forward(&embeds, &at, &mut unreserved, None).unwrap();
    let room = reserved.room();
    let got = e.decoder().forward(&embeds, &at, &mut reserved, None).unwrap();
    assert_eq!(max_abs_diff(&got, &want), 0.0);
    assert_eq!(reserved.room(), room.iter().map(|r| r - 1).collect::<Vec<_>>());
}
