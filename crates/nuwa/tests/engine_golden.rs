//! The unpruned LLaVA-1.5 engine against the reference stack's outputs on the tiny fixture.
mod common;
use common::*;
use nuwa::models::clip::{cls_saliency, VisionRequest};
use nuwa::Method;

#[test]
fn prompt_chunks_match_reference_tokens() {
    let p = engine().prompt(QUESTION, true).unwrap();
    assert_eq!(p.prefix, ids("input_ids.prefix"));
    assert_eq!(p.suffix, ids("input_ids.suffix"));
    assert_eq!(p.prefix.len(), golden_json()["prefix_len"].as_u64().unwrap() as usize);
}

#[test]
fn clip_hidden_states_and_cls_attention_match() {
    let ckpt = nuwa::checkpoint::Checkpoint::open(&tiny_dir()).unwrap();
    let llava = nuwa::models::llava::Llava::load(&ckpt, &nuwa::LoadOptions::default()).unwrap();
    let vision = &llava.vision;
    let req = VisionRequest { hidden_states: (0..=24).collect(), cls_attention_layer: Some(22) };
    let out = vision.forward(g("pixel_values"), &req).unwrap();
    let mut worst = 0f32;
    for i in 0..=24 {
        let d = max_abs_diff(&out.hidden_states[&i], g(&format!("vision.hidden_states.{i}")));
        assert!(d <= 1e-3, "hidden state {i}: max |Δ| {d}");
        worst = worst.max(d);
    }
    let s = cls_saliency(out.cls_attention.as_ref().unwrap()).unwrap();
    let d = max_abs_diff(&s, g("vision.cls_attention"));
    println!("hidden states max |Δ| {worst:e}; cls attention max |Δ| {d:e}");
    assert!(d <= 1e-5, "cls attention max |Δ| {d}");
}

#[test]
fn unpruned_logits_and_greedy_tokens_match() {
    let e = engine();
    let req = pixel_request(Method::NONE, 8);
    let pre = e.prefill(&req).unwrap();
    let d = max_abs_diff(&pre.logits, g("unpruned.logits_last"));
    println!("unpruned last-position logits max |Δ| {d:e}");
    assert!(d <= 2e-3, "logits max |Δ| {d}");
    assert_eq!(pre.next_position, 35 + 576 + 14);

    let gen = e.generate(&req, &mut |_| {}).unwrap();
    assert_eq!(gen.tokens, ids("unpruned.greedy"));
    assert_eq!(gen.text, golden_json()["runs"]["unpruned"]["text"].as_str().unwrap().trim_start());
}
