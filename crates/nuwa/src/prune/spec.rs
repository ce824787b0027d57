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
        }
    }
}

impl PruneSpec {
    /// The method this spec asks for, validated. Knobs of other methods are ignored, except `keep`,
    /// which only `manual` reads and is refused elsewhere rather than silently dropped.
    pub fn method(&self) -> Result<Method> {
        if self.keep.is_some() && self.method != "manual" {
            return Err(Error::invalid("keep", format!("applies to the manual method only, not {:?}", self.method)));
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
