//! Exact sizes, in bytes, of what string built-ins make, computed from their input without
//! building anything: each scan is linear in the input and allocates nothing.

/// `s.to_uppercase().len()`.
pub(crate) fn upper_len(s: &str) -> usize {
    if s.is_ascii() {
        return s.len();
    }
    s.chars().map(upper_char_len).sum()
}

/// `s.to_lowercase().len()` (an upper bound: final sigma may shrink, never grow).
pub(crate) fn lower_len(s: &str) -> usize {
    if s.is_ascii() {
        return s.len();
    }
    s.chars().map(lower_char_len).sum()
}

fn upper_char_len(c: char) -> usize {
    c.to_uppercase().map(char::len_utf8).sum()
}

fn lower_char_len(c: char) -> usize {
    c.to_lowercase().map(char::len_utf8).sum()
}

/// The length of minijinja's `title` of `s` (words start upper case, the rest lower case).
pub(crate) fn title_len(s: &str) -> usize {
    let mut len = 0;
    let mut word_start = true;
    for c in s.chars() {
        if c.is_ascii_punctuation() || c.is_whitespace() {
            len += c.len_utf8();
            word_start = true;
        } else if word_start {
            len += upper_char_len(c);
            word_start = false;
        } else {
            len += lower_char_len(c);
        }
    }
    len
}

/// What minijinja's `capitalize` of `s` makes: the lower-cased rest, then the result.
pub(crate) fn capitalize_made(s: &str) -> usize {
    let mut chars = s.chars();
    let first = chars.next().map_or(0, upper_char_len);
    let rest = lower_len(chars.as_str());
    first + 2 * rest
}

/// The most bytes HTML escaping of `s` can take: `<`, `>`, `&`, `"`, `'` and `/` become
/// entities of at most 6 bytes.
pub(crate) fn html_escaped_len(s: &str) -> usize {
    s.bytes()
        .map(|b| match b {
            b'<' | b'>' | b'&' | b'"' | b'\'' | b'/' => 6,
            _ => 1,
        })
        .sum()
}

/// How many pieces Python-style `s.split(separator, maxsplit)` returns (minijinja's
/// `split`): whitespace runs without a separator, at most `maxsplit + 1` pieces when
/// `maxsplit` is not negative.
pub(crate) fn split_pieces(s: &str, separator: Option<&str>, maxsplit: Option<i64>) -> usize {
    let limit = maxsplit
        .and_then(|n| usize::try_from(n).ok())
        .map_or(usize::MAX, |n| n.saturating_add(1));
    let pieces = match separator {
        None => s.split_whitespace().take(limit).count(),
        Some(separator) => s.split(separator).take(limit).count(),
    };
    pieces.max(1)
}

/// The length of `s` with every match of `from` replaced by `to_len` bytes (`from` empty
/// matches before every character and at the end, as in Rust and Python).
pub(crate) fn replaced_len(s: &str, from: &str, to_len: usize) -> usize {
    let hits = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).count()
    };
    (s.len() - hits * from.len()).saturating_add(hits.saturating_mul(to_len))
}

/// The length of `s` as a JSON string literal, quotes included.
pub(crate) fn json_string_len(s: &str, ensure_ascii: bool) -> usize {
    let escaped: usize = s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c if ensure_ascii && (c as u32) > 0x7e => 6 * c.len_utf16(),
            c => c.len_utf8(),
        })
        .sum();
    escaped + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_mapping_sizes_match_the_standard_library() {
        for s in [
            "",
            "abc",
            "straße",
            "ΐΰ",
            "İstanbul",
            "ŉ ﬃ ǅ",
            "日本語 text",
        ] {
            assert_eq!(upper_len(s), s.to_uppercase().len(), "{s}");
            assert_eq!(lower_len(s), s.to_lowercase().len(), "{s}");
            assert_eq!(
                title_len(s),
                minijinja::filters::title(s.into()).len(),
                "{s}"
            );
        }
    }

    #[test]
    fn split_piece_counts_match_the_standard_library() {
        let s = " a,b  c,,d ";
        assert_eq!(split_pieces(s, None, None), s.split_whitespace().count());
        assert_eq!(split_pieces(s, Some(","), None), s.split(',').count());
        assert_eq!(split_pieces(s, Some(","), Some(1)), 2);
        assert_eq!(split_pieces("abc", Some(""), None), "abc".split("").count());
        assert_eq!(replaced_len("aXbX", "X", 3), "a---b---".len());
        assert_eq!(replaced_len("ab", "", 1), "-a-b-".len());
    }

    #[test]
    fn json_string_sizes_count_escapes() {
        assert_eq!(
            json_string_len("a\"\u{1}é😀", false),
            "\"a\\\"\\u0001é😀\"".len()
        );
        assert_eq!(
            json_string_len("é😀", true),
            "\"\\u00e9\\ud83d\\ude00\"".len()
        );
    }
}
