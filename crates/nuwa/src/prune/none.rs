//! No pruning: every vision token enters every decoder layer (the reference every method is compared to).

use super::{FromBudget, PositionPolicy, Pruner};
use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Unpruned;

impl FromBudget for Unpruned {
    fn from_budget(_budget: usize, _seed: u64) -> Result<Self> {
        Ok(Unpruned)
    }
}

impl Pruner for Unpruned {
    fn budget(&self) -> Option<usize> {
        None
    }
    fn default_positions(&self) -> PositionPolicy {
        PositionPolicy::Original
    }
}
