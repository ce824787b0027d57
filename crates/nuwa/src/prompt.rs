//! Tokenising a conversation: a family renders its chat template with its image placeholder, the whole
//! text is tokenised once, and the image's place is where the placeholder's token id lands — never a
//! split of the text or a constant.

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// The prompt's token ids. With an image, `prefix` comes before it and `suffix` after; without one,
/// `suffix` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTokens {
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
}

/// The tokenizer with the path it came from, for error messages.
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            msg: format!("cannot load tokenizer.json: {e}"),
        })?;
        Ok(Self { inner, path: path.to_path_buf() })
    }

    fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_bos)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), msg: format!("cannot encode the prompt: {e}") })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenises a rendered conversation (BOS added as the tokenizer says) and splits it at the image
    /// token `image_token`: exactly one with an image, none without.
    pub fn conversation(
        &self,
        text: &str,
        image_token: u32,
        placeholder: &str,
        with_image: bool,
    ) -> Result<PromptTokens> {
        let ids = self.encode(text, true)?;
        let at: Vec<usize> = ids.iter().enumerate().filter(|(_, &t)| t == image_token).map(|(i, _)| i).collect();
        match (with_image, at.as_slice()) {
            (true, [i]) => Ok(PromptTokens { prefix: ids[..*i].to_vec(), suffix: ids[i + 1..].to_vec() }),
            (false, []) => Ok(PromptTokens { prefix: ids, suffix: Vec::new() }),
            (true, []) => Err(Error::Internal(format!("the chat template lost the image placeholder {placeholder}"))),
            (false, _) => Err(Error::invalid("prompt", format!("contains {placeholder} but no image was given"))),
            (true, _) => Err(Error::invalid(
                "prompt",
                format!(
                    "names {n} images ({placeholder} appears {n} times); one image per prompt is supported",
                    n = at.len()
                ),
            )),
        }
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
