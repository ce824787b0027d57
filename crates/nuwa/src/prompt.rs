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

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

/// A piece of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// Where the image goes (its pixels travel separately).
    Image,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

/// A chat to be continued by the assistant: optional system messages, then user and assistant turns
/// ending with a user turn. At most one image part in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

impl Conversation {
    /// One question, about an image when `with_image` (placed before the text, as LLaVA was trained).
    pub fn question(text: &str, with_image: bool) -> Self {
        let mut parts = if with_image { vec![Part::Image] } else { vec![] };
        parts.push(Part::Text(text.to_owned()));
        Self { messages: vec![Message { role: Role::User, parts }] }
    }

    pub fn has_image(&self) -> bool {
        self.messages.iter().flat_map(|m| &m.parts).any(|p| *p == Part::Image)
    }

    /// Refuses what no template can render: no user turn last, several images, an image outside a user turn.
    pub fn validate(&self) -> Result<()> {
        if self.messages.last().is_none_or(|m| m.role != Role::User) {
            return Err(Error::invalid("messages", "must end with a user message"));
        }
        let images = self.messages.iter().flat_map(|m| &m.parts).filter(|p| **p == Part::Image).count();
        if images > 1 {
            return Err(Error::invalid(
                "messages",
                format!("hold {images} images; one image per request is supported"),
            ));
        }
        if self.messages.iter().any(|m| m.role != Role::User && m.parts.contains(&Part::Image)) {
            return Err(Error::invalid("messages", "may carry an image only in a user message"));
        }
        Ok(())
    }
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

    /// The ids of `text`, special tokens added as the tokenizer says when `add_bos`.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
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

    /// The largest id the tokenizer can produce, added tokens included.
    pub fn max_token_id(&self) -> u32 {
        self.inner.get_vocab(true).into_values().max().unwrap_or(0)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
