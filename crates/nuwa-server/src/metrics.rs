//! Counters and histograms in the Prometheus text format, kept with atomics and one small lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency buckets.
const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (c, &b) in self.counts.iter_mut().zip(&BUCKETS) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(&BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            self.count, self.sum, self.count
        );
    }
}

#[derive(Default)]
pub struct Metrics {
    /// Requests answered, by HTTP status.
    by_status: Mutex<std::collections::BTreeMap<u16, u64>>,
    pub queue_depth: AtomicUsize,
    ttft: Mutex<Histogram>,
    per_token: Mutex<Histogram>,
    prompt_tokens: AtomicU64,
    vision_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl Metrics {
    pub fn answered(&self, status: u16) {
        *self.by_status.lock().expect("metrics lock").entry(status).or_default() += 1;
    }

    pub fn first_token(&self, seconds: f64) {
        self.ttft.lock().expect("metrics lock").observe(seconds);
    }

    pub fn token(&self, seconds: f64) {
        self.per_token.lock().expect("metrics lock").observe(seconds);
    }

    pub fn tokens(&self, prompt: usize, vision: usize, completion: usize) {
        self.prompt_tokens.fetch_add(prompt as u64, Ordering::Relaxed);
        self.vision_tokens.fetch_add(vision as u64, Ordering::Relaxed);
        self.completion_tokens.fetch_add(completion as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP nuwa_requests_total Requests answered, by HTTP status.\n# TYPE nuwa_requests_total counter\n",
        );
        for (status, n) in self.by_status.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "nuwa_requests_total{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP nuwa_queue_depth Requests waiting for the worker.\n# TYPE nuwa_queue_depth gauge\nnuwa_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        self.ttft.lock().expect("metrics lock").render(
            "nuwa_time_to_first_token_seconds",
            "From accepting a request to its first token.",
            &mut out,
        );
        self.per_token.lock().expect("metrics lock").render(
            "nuwa_time_per_output_token_seconds",
            "Between consecutive output tokens.",
            &mut out,
        );
        for (name, help, v) in [
            ("nuwa_prompt_tokens_total", "Text tokens of prompts.", &self.prompt_tokens),
            ("nuwa_vision_tokens_total", "Vision tokens that entered the decoder.", &self.vision_tokens),
            ("nuwa_completion_tokens_total", "Generated tokens.", &self.completion_tokens),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
        }
        out
    }
}
