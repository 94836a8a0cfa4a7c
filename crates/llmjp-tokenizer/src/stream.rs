//! Incremental decoding that never splits a UTF-8 character.

use crate::{Result, Tokenizer};

/// Decodes ids one at a time into text chunks.
///
/// A chunk is released only when the text decoded so far is final: it does not end in an
/// incomplete character (U+FFFD) and the last id is not a byte-fallback token (`<0xE3>`…) or
/// an id the decode drops, since a following byte could still change how the whole byte run
/// decodes. The chunks,
/// followed by [`finish`](Self::finish), concatenate to exactly what
/// [`Tokenizer::decode`] returns for all the ids at once.
///
/// The decoder keeps only the ids since the last released chunk, so memory stays bounded
/// over long generations.
#[derive(Debug, Clone)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    /// Ids from the start of the decoding window (the previous chunk's ids) onwards.
    ids: Vec<u32>,
    /// How many of `ids` were already released as text.
    read_offset: usize,
}

impl<'a> StreamDecoder<'a> {
    pub(crate) fn new(tokenizer: &'a Tokenizer, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            read_offset: 0,
        }
    }

    /// Feeds one id; returns the text it completes, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        if self.tokenizer.is_byte_fallback(id) || !self.closes_byte_run(id) {
            return Ok(None);
        }
        self.release(false)
    }

    /// Releases whatever text is still held back (an unfinished byte sequence decodes to
    /// U+FFFD, as in a one-shot decode) and starts afresh.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let text = self.release(true)?;
        self.ids.clear();
        self.read_offset = 0;
        Ok(text)
    }

    /// Whether `id` reaches the decoder as a token of its own, ending any run of byte tokens
    /// before it. Ids the decode drops (skipped special tokens, ids outside the vocabulary)
    /// leave the run open.
    fn closes_byte_run(&self, id: u32) -> bool {
        let known = (id as usize) < self.tokenizer.vocab_size();
        known && !(self.skip_special_tokens && self.tokenizer.is_special(id))
    }

    fn release(&mut self, force: bool) -> Result<Option<String>> {
        let skip = self.skip_special_tokens;
        let prefix = self.tokenizer.decode(&self.ids[..self.read_offset], skip)?;
        let text = self.tokenizer.decode(&self.ids, skip)?;
        if text.len() <= prefix.len() || (!force && text.ends_with('\u{FFFD}')) {
            return Ok(None);
        }
        let Some(chunk) = text.get(prefix.len()..) else {
            return Ok(None);
        };
        let chunk = chunk.to_string();
        // The released ids become the next window's prefix: they give the decoder the
        // context (a leading space, a byte run) that the new ids are decoded in.
        self.ids.drain(..self.read_offset);
        self.read_offset = self.ids.len();
        Ok(Some(chunk))
    }
}
