//! Shared helpers for the fixture tests: paths, the golden tensors, the tiny engine.
#![allow(dead_code)] // each test binary uses a different subset

pub mod hostile;
pub mod scratch;

use candle_core::{Device, Tensor};
use nuwa::{Engine, LoadOptions};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn tiny_dir() -> PathBuf {
    fixtures().join("tiny-llava-1.5")
}

pub fn golden() -> &'static HashMap<String, Tensor> {
    static G: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    G.get_or_init(|| candle_core::safetensors::load(tiny_dir().join("golden.safetensors"), &Device::Cpu).unwrap())
}

pub fn golden_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(tiny_dir().join("golden.json")).unwrap()).unwrap()
}

pub fn g(name: &str) -> &'static Tensor {
    golden().get(name).unwrap_or_else(|| panic!("golden tensor {name} missing"))
}

pub fn ids(name: &str) -> Vec<u32> {
    g(name).to_vec1::<i64>().unwrap().into_iter().map(|v| v as u32).collect()
}

pub fn usizes(name: &str) -> Vec<usize> {
    g(name).to_vec1::<i64>().unwrap().into_iter().map(|v| v as usize).collect()
}

/// The fixture's question about its golden pixel values, greedy, `max_new_tokens` long.
pub fn pixel_request(method: nuwa::Method, max_new_tokens: usize) -> nuwa::GenerateRequest {
    nuwa::GenerateRequest {
        prompt: QUESTION.into(),
        image: Some(nuwa::ImageInput::Pixels(g("pixel_values").clone())),
        method,
        positions: None,
        sampling: nuwa::Sampling::default(),
        max_new_tokens,
        stop: vec![],
    }
}

pub fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load(&tiny_dir(), &LoadOptions::default()).unwrap())
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap();
    (a - b).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

pub const QUESTION: &str = "What is shown in this image?";

/// A golden 1-D position-id tensor as the decoder's positions.
pub fn linear_positions(name: &str) -> nuwa::layout::Positions {
    nuwa::layout::Positions::Linear(ids(name))
}
