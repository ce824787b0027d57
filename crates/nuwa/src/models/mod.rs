//! The networks, one file each: configuration, weights, forward pass. They expose hooks (requested
//! hidden states, one attention row, a token dropper) and know nothing about pruning methods.
pub mod clip;
pub mod llama;
pub mod llava;
