//! A pruning request as a front end spells it (the CLI's flags, a server's `pruning` object): a
//! method name and every knob any method reads, with their defaults. [`PruneSpec::method`] turns it into
//! a [`Method`] with the same validation everywhere.

use super::{fastv, nuwa, random, Method, PositionPolicy};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruneSpec {
    /// A name from [`super::METHOD_NAMES`].
    pub method: String,
    pub budget: usize,
    pub stages: nuwa::Stages,
    pub distance: f64,
    /// `None`: the layout's default (0.55; 0.5 on LLaVA-NeXT's anyres layout).
    pub pillar_quantile: Option<f64>,
    /// Nüwa's 2×2 cell grouping (off = the "no region" ablation).
    pub cells: bool,
    pub stage2_layer: Option<usize>,
    pub stage2_rule: nuwa::Stage2Rule,
    pub fastv_count: fastv::Count,
    /// For `manual`: the slots to keep.
    pub keep: Option<Vec<usize>>,
    /// Overrides the method's own position policy.
    pub positions: Option<PositionPolicy>,
    /// For the random methods and Nüwa's random stage-2 rule.
    pub seed: u64,
    /// Nüwa: a keep ratio in (0, 1] instead of `budget` (`--budget 25%`).
    pub keep_ratio: Option<f64>,
    /// Nüwa: the stage ratios and top-n spelled out instead of a preset keep ratio (all three together).
    pub stage1_ratio: Option<f64>,
    pub stage2_ratio: Option<f64>,
    pub top_n: Option<usize>,
    /// Nüwa: the released code's behaviour where it differs (see [`nuwa::NuwaConfig::as_released`]).
    pub as_released: bool,
}

impl Default for PruneSpec {
    fn default() -> Self {
        let n = nuwa::NuwaConfig::default();
        Self {
            method: "nuwa".into(),
            budget: n.budget,
            stages: n.stages,
            distance: n.distance,
            pillar_quantile: n.pillar_quantile,
            cells: n.cells,
            stage2_layer: None,
            stage2_rule: n.stage2_rule,
            fastv_count: fastv::Count::Average,
            keep: None,
            positions: None,
            seed: 0,
            keep_ratio: None,
            stage1_ratio: None,
            stage2_ratio: None,
            top_n: None,
            as_released: false,
        }
    }
}

/// A budget as a front end spells it: a token count (`64`) or a keep ratio in percent (`25%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Tokens(usize),
    Percent(f64),
}

impl std::str::FromStr for Budget {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().strip_suffix('%') {
            Some(p) => match p.trim().parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 100.0 => Ok(Budget::Percent(v)),
                _ => Err(format!("expected a keep ratio in (0%, 100%] like 25%, got {s:?}")),
            },
            None => s.trim().parse::<usize>().map(Budget::Tokens).map_err(|_| {
                format!("expected a number of vision tokens (e.g. 64) or a keep ratio (e.g. 25%), got {s:?}")
            }),
        }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Tokens(n) => write!(f, "{n}"),
            Budget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl PruneSpec {
    /// `method` at `budget`, every other knob at its default.
    pub fn at(method: &str, budget: Budget, seed: u64) -> Self {
        let (budget, keep_ratio) = match budget {
            Budget::Tokens(n) => (n, None),
            Budget::Percent(p) => (PruneSpec::default().budget, Some(p / 100.0)),
        };
        PruneSpec { method: method.to_owned(), budget, keep_ratio, seed, ..PruneSpec::default() }
    }

    /// The method this spec asks for, validated. Knobs of other methods are ignored, except `keep`,
    /// which only `manual` reads and is refused elsewhere rather than silently dropped.
    pub fn method(&self) -> Result<Method> {
        if self.keep.is_some() && self.method != "manual" {
            return Err(Error::invalid("keep", format!("applies to the manual method only, not {:?}", self.method)));
        }
        let explicit = [self.stage1_ratio.is_some(), self.stage2_ratio.is_some(), self.top_n.is_some()];
        let keep = match (self.keep_ratio, self.stage1_ratio, self.stage2_ratio, self.top_n) {
            (None, None, None, None) => None,
            (Some(r), None, None, None) => Some(nuwa::Keep::Ratio(r)),
            (None, Some(stage1), Some(stage2), Some(top_n)) => {
                Some(nuwa::Keep::Explicit(nuwa::KeepRatios { stage1, stage2, top_n }))
            }
            (Some(_), ..) => {
                return Err(Error::invalid(
                    "stage1_ratio",
                    "a percentage budget and explicit stage ratios exclude each other; give one",
                ))
            }
            _ => {
                let missing = ["stage1_ratio", "stage2_ratio", "top_n"]
                    .iter()
                    .zip(explicit)
                    .filter(|(_, given)| !given)
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>();
                return Err(Error::invalid(
                    "stage1_ratio",
                    format!("stage1_ratio, stage2_ratio and top_n go together; missing {}", missing.join(", ")),
                ));
            }
        };
        if (keep.is_some() || self.as_released) && self.method != "nuwa" {
            return Err(Error::invalid(
                "budget",
                format!("keep ratios and the released behaviour apply to nuwa only, not {:?}", self.method),
            ));
        }
        let method = match self.method.as_str() {
            "nuwa" => Method::Nuwa(nuwa::NuwaConfig {
                budget: self.budget,
                stages: self.stages,
                distance: self.distance,
                pillar_quantile: self.pillar_quantile,
                cells: self.cells,
                stage2_layer: self.stage2_layer,
                stage2_rule: self.stage2_rule,
                seed: self.seed,
                keep,
                as_released: self.as_released,
            }),
            "fastv" => Method::FastV(fastv::FastV { budget: self.budget, count: self.fastv_count }),
            "manual" => match &self.keep {
                Some(keep) => Method::Manual(random::Manual { keep: keep.clone() }),
                None => {
                    return Err(Error::invalid("keep", "is required by the manual method (a list of patch indices)"))
                }
            },
            other => Method::from_name(other, self.budget, self.seed)?,
        };
        method.validate()?;
        Ok(method)
    }
}
