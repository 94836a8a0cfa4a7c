//! Reading what a user passes (prompts, message files, standard input) within a size limit.

use std::io::{BufRead, Read};
use std::path::Path;

use llmjp::crates::weights;

use crate::Result;

/// Largest prompt or messages file read (far more text than a context of tokens holds).
pub const MAX_INPUT_BYTES: u64 = 64 << 20;

/// All of standard input, at most [`MAX_INPUT_BYTES`].
pub fn stdin() -> Result<String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(format!("standard input is larger than {MAX_INPUT_BYTES} bytes").into());
    }
    String::from_utf8(bytes).map_err(|_| "standard input is not valid UTF-8 text".into())
}

/// A regular file of at most [`MAX_INPUT_BYTES`] (not a FIFO or device, which could block
/// or never end).
pub fn file(path: &Path) -> Result<String> {
    Ok(weights::read_file(path, MAX_INPUT_BYTES)?)
}

/// Longest line read from standard input by `llmjp chat` and `llmjp tokenize` (far more than a context of tokens holds).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// How far past the limit a too-long line is skipped, in multiples of the limit, before
/// reading stops with an error.
const SKIP_LINES_OF: usize = 16;

/// One line of input, or why there is none.
#[derive(Debug, PartialEq)]
pub enum Line {
    Text(String),
    NotUtf8,
    TooLong,
    End,
}

/// Reads a line of at most `limit` bytes; a longer line is consumed and reported, so that
/// input without newlines cannot grow memory.
pub fn read_line(input: &mut impl BufRead, limit: usize) -> std::io::Result<Line> {
    let mut bytes = Vec::new();
    let read = input
        .by_ref()
        .take(limit as u64 + 1)
        .read_until(b'\n', &mut bytes)?;
    if read == 0 {
        return Ok(Line::End);
    }
    if bytes.len() > limit && bytes.last() != Some(&b'\n') {
        // Skip the rest of the line, a buffer at a time, but not without end: input with no
        // newline at all (`< /dev/zero`) stops with an error once SKIP_LINES_OF × limit bytes
        // were skipped.
        let mut skipped = 0usize;
        loop {
            let buffer = input.fill_buf()?;
            if buffer.is_empty() {
                break;
            }
            if skipped > limit.saturating_mul(SKIP_LINES_OF) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "an input line ran past {} bytes without a newline: stopped reading",
                        limit.saturating_mul(SKIP_LINES_OF)
                    ),
                ));
            }
            skipped += buffer.len();
            match buffer.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    input.consume(end + 1);
                    break;
                }
                None => {
                    let len = buffer.len();
                    input.consume(len);
                }
            }
        }
        return Ok(Line::TooLong);
    }
    Ok(String::from_utf8(bytes).map_or(Line::NotUtf8, Line::Text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_bad_ones_reported() {
        let mut input: &[u8] = b"hello\n\xff\xfe\nxxxxxxxxxxxx\nbye";
        assert_eq!(
            read_line(&mut input, 8).unwrap(),
            Line::Text("hello\n".into())
        );
        assert_eq!(read_line(&mut input, 8).unwrap(), Line::NotUtf8);
        assert_eq!(read_line(&mut input, 8).unwrap(), Line::TooLong);
        assert_eq!(read_line(&mut input, 8).unwrap(), Line::Text("bye".into()));
        assert_eq!(read_line(&mut input, 8).unwrap(), Line::End);
    }

    #[test]
    fn a_line_without_end_stops_reading_in_bounded_time() {
        let mut input = std::io::BufReader::with_capacity(4, std::io::repeat(0));
        let error = read_line(&mut input, 8).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("without a newline"), "{error}");
    }
}
