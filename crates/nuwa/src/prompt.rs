//! Prompt assembly: the vicuna_v1 conversation LLaVA-1.5 was trained with, tokenised in two chunks
//! around the image so the image's place in the sequence comes from the tokens, never from a constant.

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

pub const VICUNA_SYSTEM: &str = "A chat between a curious human and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the human's questions.";

/// Where the image goes in a user's prompt when it names a place for it.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// The prompt's token ids. With an image, `prefix` comes before it and `suffix` after; without one,
/// `suffix` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTokens {
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
}

/// The vicuna_v1 conversation text for one question, split at the image when there is one:
/// `{system} USER: <image>\n{question} ASSISTANT:`. A question that already contains `<image>`
/// keeps the image where it says.
pub fn vicuna_v1(question: &str, with_image: bool) -> Result<(String, Option<String>)> {
    let question = question.trim();
    match (with_image, question.matches(IMAGE_PLACEHOLDER).count()) {
        (_, n) if n > 1 => Err(Error::InvalidArgument(format!(
            "the prompt names {n} images ({IMAGE_PLACEHOLDER} appears {n} times); one image per prompt is supported"
        ))),
        (false, 1) => Err(Error::InvalidArgument(format!(
            "the prompt contains {IMAGE_PLACEHOLDER} but no image was given"
        ))),
        (false, _) => Ok((format!("{VICUNA_SYSTEM} USER: {question} ASSISTANT:"), None)),
        (true, 0) => Ok((format!("{VICUNA_SYSTEM} USER: "), Some(format!("\n{question} ASSISTANT:")))),
        (true, _) => {
            let (before, after) = question.split_once(IMAGE_PLACEHOLDER).expect("one placeholder");
            Ok((format!("{VICUNA_SYSTEM} USER: {before}"), Some(format!("{after} ASSISTANT:"))))
        }
    }
}

/// The tokenizer with the path it came from, for error messages.
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer { path: path.to_path_buf(), msg: format!("cannot load tokenizer.json: {e}") })?;
        Ok(Self { inner, path: path.to_path_buf() })
    }

    fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_bos)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), msg: format!("cannot encode the prompt: {e}") })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenises a conversation: BOS only at the start, the text after the image on its own.
    pub fn prompt(&self, question: &str, with_image: bool) -> Result<PromptTokens> {
        let (before, after) = vicuna_v1(question, with_image)?;
        Ok(PromptTokens {
            prefix: self.encode(&before, true)?,
            suffix: match after {
                Some(after) => self.encode(&after, false)?,
                None => Vec::new(),
            },
        })
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), msg: format!("cannot decode tokens: {e}") })
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
