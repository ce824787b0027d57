//! Decoding one answer token by token after a prefill: sampling, streaming text that never splits a
//! UTF-8 sequence or shows the start of a stop string, and a typed reason for stopping. `generate`,
//! `eval`, `bench` and the server all decode through this.

use super::{ms, Engine, Generation, Prefill};
use crate::generation::{Sampler, Sampling};
use crate::{Error, Result};
use candle_core::Tensor;
use std::time::Instant;

/// Why decoding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_new_tokens` were generated.
    Length,
    /// The context window is full.
    Context,
    /// A stop string appeared (it is not part of the text).
    Stop,
    /// The caller cancelled the session.
    Cancelled,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::Length => "length",
            StopReason::Context => "context",
            StopReason::Stop => "stop",
            StopReason::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub max_new_tokens: usize,
    /// Decoding stops before the first of these appears in the text.
    pub stop: Vec<String>,
    /// Keep decoding through end-of-sequence tokens (benchmarks measure a fixed number of steps).
    pub ignore_eos: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { max_new_tokens: 256, stop: Vec::new(), ignore_eos: false }
    }
}

impl SessionOptions {
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(Error::invalid("max_new_tokens", "must be at least 1"));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::invalid("stop", "must not contain an empty string"));
        }
        Ok(())
    }
}

/// One generated token and the text it made printable (possibly empty: an incomplete UTF-8 sequence,
/// a possible start of a stop string, or no tokenizer).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub token: u32,
    pub text: String,
}

pub struct Session<'e> {
    engine: &'e Engine,
    state: Prefill,
    sampler: Sampler,
    opts: SessionOptions,
    /// Logits to sample the next token from; `None` once that token is chosen and not yet decoded.
    logits: Option<Tensor>,
    tokens: Vec<u32>,
    /// The answer's text so far (cut at a stop string once one appears).
    text: String,
    /// Bytes of `text` handed out.
    shown: usize,
    stopped: Option<StopReason>,
    started: Instant,
}

impl<'e> Session<'e> {
    pub(super) fn new(
        engine: &'e Engine,
        mut state: Prefill,
        sampling: &Sampling,
        opts: SessionOptions,
    ) -> Result<Self> {
        opts.validate()?;
        let sampler = Sampler::new(sampling)?;
        // Room for the answer up front (never more than the context holds).
        let context = engine.decoder().config().max_position_embeddings;
        state.cache.reserve(opts.max_new_tokens.min(context))?;
        let logits = Some(state.logits.clone());
        Ok(Self {
            engine,
            state,
            sampler,
            opts,
            logits,
            tokens: Vec::new(),
            text: String::new(),
            shown: 0,
            stopped: None,
            started: Instant::now(),
        })
    }

    /// The next token, or `None` once decoding has stopped ([`Session::stop_reason`] says why).
    pub fn step(&mut self) -> Result<Option<Step>> {
        if self.stopped.is_some() {
            return Ok(None);
        }
        let logits = match self.logits.take() {
            Some(l) => l,
            None => {
                let context = self.engine.decoder().config().max_position_embeddings;
                if self.state.next_position as usize >= context {
                    return Ok(self.stop(StopReason::Context));
                }
                let last = *self.tokens.last().expect("a token was chosen before");
                let position = self.state.positions.text_run(self.state.next_position, 1);
                let embeds = self.engine.decoder().embed(&[last])?;
                let logits = self.engine.decoder().forward(&embeds, &position, &mut self.state.cache, None)?;
                self.state.next_position += 1;
                logits
            }
        };
        let token = self.sampler.sample(&logits)?;
        if !self.opts.ignore_eos && self.engine.eos_token_ids.contains(&token) {
            return Ok(self.stop(StopReason::Eos));
        }
        self.tokens.push(token);
        let mut text = String::new();
        if let Some(tok) = &self.engine.tokenizer {
            let full = tok.decode(&self.tokens)?;
            match first_stop(&full, &self.opts.stop) {
                Some(at) => {
                    self.text = full[..at].to_owned();
                    self.stopped = Some(StopReason::Stop);
                    text = self.take_text(self.text.len());
                }
                None => {
                    self.text = full;
                    // Hold back an incomplete UTF-8 sequence until its last byte arrives, and anything
                    // that may turn out to start a stop string.
                    if !self.text.ends_with('\u{FFFD}') {
                        let end = self.text.len() - stop_prefix_len(&self.text, &self.opts.stop);
                        text = self.take_text(end);
                    }
                }
            }
        }
        if self.stopped.is_none() && self.tokens.len() >= self.opts.max_new_tokens {
            self.stopped = Some(StopReason::Length);
            text.push_str(&self.take_text(self.text.len()));
        }
        Ok(Some(Step { token, text }))
    }

    /// Text from what was shown up to byte `end` of the answer (nothing if the decoded text was
    /// rewritten before that point, which detokenisers may do).
    fn take_text(&mut self, end: usize) -> String {
        match self.text.get(self.shown..end) {
            Some(piece) if end > self.shown => {
                self.shown = end;
                piece.to_owned()
            }
            _ => String::new(),
        }
    }

    fn stop(&mut self, reason: StopReason) -> Option<Step> {
        self.stopped = Some(reason);
        None
    }

    /// Stops decoding now; the generation reports [`StopReason::Cancelled`].
    pub fn cancel(&mut self) {
        self.stopped.get_or_insert(StopReason::Cancelled);
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stopped
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Text not yet handed out by [`Session::step`] (what was held back when decoding stopped).
    pub fn pending_text(&mut self) -> String {
        if self.stopped.is_none() {
            return String::new();
        }
        self.take_text(self.text.len())
    }

    /// Steps until decoding stops, streaming text to `on_text`.
    pub fn run(mut self, on_text: &mut dyn FnMut(&str)) -> Result<Generation> {
        while let Some(step) = self.step()? {
            if !step.text.is_empty() {
                on_text(&step.text);
            }
        }
        let rest = self.pending_text();
        if !rest.is_empty() {
            on_text(&rest);
        }
        Ok(self.finish())
    }

    /// The generation so far (decoding need not have stopped: an unfinished one reports `cancelled`).
    pub fn finish(mut self) -> Generation {
        let n = self.tokens.len();
        self.state.timings.decode_ms_per_token = if n > 1 { ms(self.started) / (n - 1) as f64 } else { 0.0 };
        Generation {
            text: self.text,
            tokens: self.tokens,
            prompt_tokens: self.state.prompt_tokens,
            stop_reason: self.stopped.unwrap_or(StopReason::Cancelled),
            timings: self.state.timings,
            vision: self.state.vision,
            kv_cache_bytes: self.state.cache.bytes(),
            encoded: self.state.encoded,
        }
    }
}

/// Byte offset of the earliest stop string in `text`.
fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// Length of the longest end of `text` that is a proper start of some stop string.
fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| (1..s.len()).rev().filter(move |&k| s.is_char_boundary(k)).map(move |k| &s[..k]))
        .filter(|prefix| text.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0)
}
