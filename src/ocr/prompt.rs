//! Tokenizer, prompt presets and ids built the reference way, streaming detokeniser.
//!
//! The reference feeds the model the bare prompt (the `plain` conversation template adds nothing
//! but `.strip()`): BOS, then the prompt split on `<image>`, each piece encoded without special
//! tokens, with the image's run of placeholder ids where each `<image>` stood.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokenizers::Tokenizer;

/// The tag that marks where an image goes in a prompt.
pub const IMAGE_TAG: &str = "<image>";
/// The end-of-sentence marker as it appears in decoded text with special tokens.
pub const EOS_TEXT: &str = "<｜end▁of▁sentence｜>";

/// Tokenizer and prompt errors.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error(
        "cannot load tokenizer {path}: {message}; the model folder needs a valid tokenizer.json"
    )]
    Load { path: PathBuf, message: String },
    #[error("tokenizer failed: {0}")]
    Tokenize(String),
    #[error(
        "the prompt has {tags} {IMAGE_TAG} tag(s) but {images} image(s) were given; put one {IMAGE_TAG} where each image goes, e.g. \"{IMAGE_TAG}\\nFree OCR.\""
    )]
    ImageCount { tags: usize, images: usize },
    #[error("the prompt is empty; give the text after the image, e.g. \"Free OCR.\", or a preset")]
    Empty,
    #[error(
        "the prompt has {0} {IMAGE_TAG} tags but one image is given; put one {IMAGE_TAG} where the image goes, or none (the image then comes first)"
    )]
    ManyImageTags(usize),
}

/// A prompt a user typed (`dsocr ocr --prompt`, the dashboard's custom prompt, `serve`'s
/// `prompt` field and chat text), made into the prompt one image runs with: `<image>` marks
/// where the image goes; a prompt without it gets the image first, on its own line
/// (`<image>\n` + the text), as every preset has it. An empty prompt, or one with more than one
/// `<image>`, is refused.
pub fn user_prompt(text: &str) -> Result<String, PromptError> {
    match text.matches(IMAGE_TAG).count() {
        _ if text.trim().is_empty() => Err(PromptError::Empty),
        0 => Ok(format!("{IMAGE_TAG}\n{}", text.trim())),
        1 => Ok(text.to_string()),
        tags => Err(PromptError::ManyImageTags(tags)),
    }
}

/// The official prompts (from the model card and the vLLM scripts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preset {
    /// `<image>\n<|grounding|>Convert the document to markdown.`
    Document,
    /// `<image>\n<|grounding|>OCR this image.`
    Ocr,
    /// `<image>\nFree OCR.` (no layout boxes)
    Free,
    /// `<image>\nParse the figure.`
    Figure,
    /// `<image>\nDescribe this image in detail.`
    Describe,
    /// `<image>\nLocate <|ref|>TEXT<|/ref|> in the image.`
    Locate(String),
}

impl Preset {
    /// Names accepted by [`FromStr`] (`locate:TEXT` for [`Preset::Locate`]).
    pub const NAMES: [&'static str; 6] =
        ["document", "ocr", "free", "figure", "describe", "locate"];

    /// The prompt text.
    pub fn prompt(&self) -> String {
        match self {
            Preset::Document => "<image>\n<|grounding|>Convert the document to markdown.".into(),
            Preset::Ocr => "<image>\n<|grounding|>OCR this image.".into(),
            Preset::Free => "<image>\nFree OCR.".into(),
            Preset::Figure => "<image>\nParse the figure.".into(),
            Preset::Describe => "<image>\nDescribe this image in detail.".into(),
            Preset::Locate(text) => format!("<image>\nLocate <|ref|>{text}<|/ref|> in the image."),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Preset::Document => f.write_str("document"),
            Preset::Ocr => f.write_str("ocr"),
            Preset::Free => f.write_str("free"),
            Preset::Figure => f.write_str("figure"),
            Preset::Describe => f.write_str("describe"),
            Preset::Locate(text) => write!(f, "locate:{text}"),
        }
    }
}

impl FromStr for Preset {
    type Err = String;

    /// `document`, `ocr`, `free`, `figure`, `describe` or `locate:TEXT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, arg) = s.split_once(':').unwrap_or((s, ""));
        let preset = match name.to_ascii_lowercase().as_str() {
            "document" => Preset::Document,
            "ocr" => Preset::Ocr,
            "free" => Preset::Free,
            "figure" => Preset::Figure,
            "describe" => Preset::Describe,
            "locate" if !arg.trim().is_empty() => Preset::Locate(arg.trim().to_string()),
            "locate" => return Err("the locate preset needs the text to find: locate:TEXT".into()),
            _ => {
                return Err(format!(
                    "unknown preset {name:?}; use one of {}",
                    Self::NAMES.join(", ")
                ));
            }
        };
        if !arg.is_empty() && !matches!(preset, Preset::Locate(_)) {
            return Err(format!("preset {name:?} takes no argument"));
        }
        Ok(preset)
    }
}

/// Token ids of a prompt and where the image placeholders are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptIds {
    /// BOS, text pieces and image runs.
    pub input_ids: Vec<i64>,
    /// True exactly at the image placeholder positions.
    pub images_seq_mask: Vec<bool>,
}

/// The special ids a prompt needs (from the model's config).
#[derive(Debug, Clone, Copy)]
pub struct SpecialIds {
    pub bos: i64,
    pub image: i64,
}

/// A `tokenizer.json` tokenizer with the reference's prompt building and decoding.
pub struct PromptTokenizer {
    inner: Tokenizer,
}

impl PromptTokenizer {
    /// Load `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, PromptError> {
        let inner = Tokenizer::from_file(path).map_err(|e| PromptError::Load {
            path: path.to_path_buf(),
            message: one_line(&e.to_string()),
        })?;
        Ok(Self { inner })
    }

    /// Ids of `text` without special tokens added (added tokens in the text are still matched).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, PromptError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| PromptError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, with or without special tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, PromptError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| PromptError::Tokenize(e.to_string()))
    }

    /// Size of the vocabulary including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids for `prompt` with one image run per `<image>` tag; `image_tokens[k]` is the run length
    /// of the k-th image. The prompt is stripped of surrounding whitespace first, as the
    /// reference's conversation template does.
    pub fn build(
        &self,
        prompt: &str,
        image_tokens: &[usize],
        special: SpecialIds,
    ) -> Result<PromptIds, PromptError> {
        let pieces: Vec<&str> = prompt.trim().split(IMAGE_TAG).collect();
        let tags = pieces.len() - 1;
        if tags != image_tokens.len() {
            return Err(PromptError::ImageCount {
                tags,
                images: image_tokens.len(),
            });
        }
        let mut ids = PromptIds {
            input_ids: vec![special.bos],
            images_seq_mask: vec![false],
        };
        for (i, piece) in pieces.iter().enumerate() {
            let text = self.encode(piece)?;
            ids.input_ids.extend(text.iter().map(|&t| i64::from(t)));
            ids.images_seq_mask
                .extend(std::iter::repeat_n(false, text.len()));
            if let Some(&run) = image_tokens.get(i) {
                ids.input_ids
                    .extend(std::iter::repeat_n(special.image, run));
                ids.images_seq_mask.extend(std::iter::repeat_n(true, run));
            }
        }
        Ok(ids)
    }

    /// A streaming decoder over this tokenizer.
    pub fn stream(&self, skip_special: bool) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            skip_special,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            emitted: String::new(),
        }
    }
}

/// Turns tokens into text as they arrive. Text is held back while it ends in an incomplete UTF-8
/// character (byte-level BPE splits characters across tokens), so no character is ever split,
/// and the pieces concatenate to exactly the one-shot decode of all tokens.
///
/// Each step decodes only a short window: the tokens since the previous emission plus the ones
/// before it as context, and emits what the new tokens added.
pub struct StreamDecoder<'a> {
    tokenizer: &'a PromptTokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the context window.
    prefix: usize,
    /// End of the tokens whose text has been emitted.
    read: usize,
    /// Everything emitted so far.
    emitted: String,
}

impl StreamDecoder<'_> {
    /// Add one token; returns the newly completed text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, PromptError> {
        self.ids.push(id);
        let tok = self.tokenizer;
        let before = tok.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = tok.decode(&self.ids[self.prefix..], self.skip_special)?;
        if now.ends_with(char::REPLACEMENT_CHARACTER) || now.len() <= before.len() {
            return Ok(None);
        }
        let Some(text) = now.strip_prefix(before.as_str()) else {
            return Ok(None);
        };
        self.prefix = self.read;
        self.read = self.ids.len();
        self.emitted.push_str(text);
        Ok(Some(text.to_string()))
    }

    /// The text not yet emitted, completing the one-shot decode of every token pushed (an
    /// incomplete character at the very end becomes a replacement character, as there).
    pub fn finish(&mut self) -> Result<Option<String>, PromptError> {
        let full = self.tokenizer.decode(&self.ids, self.skip_special)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        let rest = full
            .strip_prefix(self.emitted.as_str())
            .filter(|r| !r.is_empty())
            .map(str::to_string);
        self.emitted = full;
        Ok(rest)
    }

    /// All tokens pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// All text emitted so far.
    pub fn text(&self) -> &str {
        &self.emitted
    }
}

/// First line of a possibly multi-line message.
fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_by_name() {
        for p in [
            Preset::Document,
            Preset::Ocr,
            Preset::Free,
            Preset::Figure,
            Preset::Describe,
            Preset::Locate("the total".into()),
        ] {
            assert_eq!(p.to_string().parse::<Preset>(), Ok(p.clone()));
            assert!(p.prompt().starts_with("<image>\n"));
        }
        assert!("locate".parse::<Preset>().is_err());
        assert!("free:x".parse::<Preset>().is_err());
        assert!(
            "poem"
                .parse::<Preset>()
                .unwrap_err()
                .contains("document, ocr")
        );
    }

    #[test]
    fn user_prompts_get_one_image_tag() {
        // Without a tag, the image goes first, as in the presets.
        assert_eq!(user_prompt("Free OCR.").ok(), Some(Preset::Free.prompt()));
        assert_eq!(
            user_prompt("  Read the table. ").ok().as_deref(),
            Some("<image>\nRead the table.")
        );
        // A tag stays where it is.
        for p in ["<image>\nFree OCR.", "Read this: <image> now"] {
            assert_eq!(user_prompt(p).ok().as_deref(), Some(p));
        }
        // One image: not two tags; and not an empty prompt.
        let err = user_prompt("<image> and <image>").unwrap_err().to_string();
        assert!(err.contains("2 <image> tags"), "{err}");
        assert!(matches!(user_prompt(" \n"), Err(PromptError::Empty)));
    }
}
