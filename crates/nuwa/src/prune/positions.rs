//! Position policies: how the kept vision tokens (and the text after them) are numbered, given the
//! positions the model assigns to the unpruned sequence.

use crate::layout::{Positions, SequenceLayout};
use crate::Result;

/// How vision tokens (and the text after them) are numbered for RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionPolicy {
    /// Each token keeps the position it has in the unpruned sequence (its representative slot's); text
    /// after the image keeps its unpruned positions too.
    #[default]
    Original,
    /// The shortened sequence is numbered on from the prefix with no gaps.
    Contiguous,
    /// Kept tokens spread over the image's slots in proportion to their slot index; text after the
    /// image keeps its unpruned positions.
    Stretched,
}

impl SequenceLayout {
    /// Positions for the prefix, one vision token per entry of `reps` (the slot it stands for) and the
    /// suffix, numbered as `policy` says.
    pub fn assign(&self, policy: PositionPolicy, reps: &[usize]) -> Result<Positions> {
        let (p, n) = (self.prefix_len, self.n_slots);
        let suffix = p + n..self.unpruned.len();
        let vision: Vec<usize> = match policy {
            PositionPolicy::Original => reps.iter().map(|&i| p + i).collect(),
            PositionPolicy::Contiguous => {
                let prefix = self.unpruned.select(&(0..p).collect::<Vec<_>>());
                let next = prefix.max().map_or(0, |m| m + 1);
                let rest = prefix.text_run(next, reps.len() + suffix.len());
                return Positions::concat(&[prefix, rest]);
            }
            PositionPolicy::Stretched => {
                let span = n.saturating_sub(1);
                let last = reps.iter().copied().max().unwrap_or(0).max(1);
                reps.iter().enumerate().map(|(j, &i)| if j == 0 { p } else { p + (i * span).div_ceil(last) }).collect()
            }
        };
        let idx: Vec<usize> = (0..p).chain(vision).chain(suffix).collect();
        Ok(self.unpruned.select(&idx))
    }

    /// The position of the first generated token after a prefill numbered `assigned` by `policy`: one
    /// past the largest id (of the unpruned sequence when the policy keeps its numbering).
    pub fn next_position(&self, policy: PositionPolicy, assigned: &Positions) -> u32 {
        let max = match policy {
            PositionPolicy::Contiguous => assigned.max(),
            PositionPolicy::Original | PositionPolicy::Stretched => self.unpruned.max(),
        };
        max.map_or(0, |m| m + 1)
    }
}
