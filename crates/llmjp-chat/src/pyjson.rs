//! `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False,
//! indent=None, separators=None, sort_keys=False)`, not Jinja's HTML-escaping filter.

use std::fmt::Write;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// Options of Python's `json.dumps` that templates use.
pub(crate) struct DumpOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

/// The `tojson` filter: `value | tojson(ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, arguments positional or by name, as transformers' Python function.
pub(crate) fn tojson_filter(
    value: &Value,
    args: &[Value],
    kwargs: Kwargs,
) -> Result<String, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let arg = |i: usize| -> Result<Option<Value>, Error> {
        let named: Option<Value> = kwargs.get(NAMES[i])?;
        Ok(named
            .or_else(|| args.get(i).cloned())
            .filter(|v| !v.is_none() && !v.is_undefined()))
    };
    let ensure_ascii = arg(0)?.is_some_and(|v| v.is_true());
    let indent = match arg(1)? {
        None => None,
        Some(v) if v.kind() == ValueKind::Number => {
            let n = i64::try_from(v.clone()).map_err(|_| bad_arg("indent must be an integer"))?;
            Some(" ".repeat(n.clamp(0, 64) as usize))
        }
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| bad_arg("indent must be a number or string"))?
                .to_string(),
        ),
    };
    let (item_separator, key_separator) = match arg(2)? {
        Some(v) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => (
                    crate::bounded::budget::display_string(&[a])?,
                    crate::bounded::budget::display_string(&[b])?,
                ),
                _ => return Err(bad_arg("separators must be a pair of strings")),
            }
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let sort_keys = arg(3)?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let options = DumpOptions {
        ensure_ascii,
        indent,
        item_separator,
        key_separator,
        sort_keys,
    };
    let mut out = String::new();
    dump(value, &options, 0, &mut out)?;
    Ok(out)
}

fn bad_arg(message: &str) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("tojson: {message}"))
}

fn dump(value: &Value, opts: &DumpOptions, depth: usize, out: &mut String) -> Result<(), Error> {
    if depth > 256 {
        return Err(bad_arg("value is nested too deeply"));
    }
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => dump_number(value, out),
        ValueKind::String => {
            dump_string(value.as_str().unwrap_or_default(), opts.ensure_ascii, out)?
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let mut items = Vec::new();
            for item in value.try_iter()? {
                crate::bounded::budget::check_growth(out.len() + items.len() * 16)?;
                items.push(item);
            }
            dump_container(out, opts, depth, ('[', ']'), &items, |item, out| {
                dump(item, opts, depth + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                crate::bounded::budget::check_growth(out.len() + entries.len() * 32)?;
                let item = value.get_item(&key)?;
                entries.push((key_string(&key)?, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            dump_container(
                out,
                opts,
                depth,
                ('{', '}'),
                &entries,
                |(key, item), out| {
                    dump_string(key, opts.ensure_ascii, out)?;
                    grow(out, opts.key_separator.len())?;
                    out.push_str(&opts.key_separator);
                    dump(item, opts, depth + 1, out)
                },
            )?;
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

fn dump_container<T>(
    out: &mut String,
    opts: &DumpOptions,
    depth: usize,
    (open, close): (char, char),
    items: &[T],
    mut dump_item: impl FnMut(&T, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    grow(out, 2)?;
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| -> Result<(), Error> {
        if let Some(indent) = &opts.indent {
            grow(out, indent.len().saturating_mul(level).saturating_add(1))?;
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
        Ok(())
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            grow(out, opts.item_separator.len())?;
            out.push_str(&opts.item_separator);
        }
        newline(out, depth + 1)?;
        dump_item(item, out)?;
    }
    newline(out, depth)?;
    grow(out, 1)?;
    out.push(close);
    Ok(())
}

/// Fails (before writing) when `out` cannot grow by `more` bytes within the render's
/// budget, or the deadline has passed.
fn grow(out: &str, more: usize) -> Result<(), Error> {
    crate::bounded::budget::check_growth(out.len().saturating_add(more))
}

/// Python converts non-string keys: `True` → `"true"`, `None` → `"null"`, numbers as text.
fn key_string(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::None | ValueKind::Bool | ValueKind::Number => {
            let mut s = String::new();
            dump(key, &DUMMY, 0, &mut s)?;
            s
        }
        kind => {
            return Err(bad_arg(&format!(
                "keys must be str, int, float, bool or None, not {kind}"
            )))
        }
    })
}

const DUMMY: DumpOptions = DumpOptions {
    ensure_ascii: false,
    indent: None,
    item_separator: String::new(),
    key_separator: String::new(),
    sort_keys: false,
};

fn dump_number(value: &Value, out: &mut String) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
    } else {
        out.push_str(&python_float_repr(
            f64::try_from(value.clone()).unwrap_or(f64::NAN),
        ));
    }
}

/// `repr(float)` in Python: the shortest round-tripping digits, fixed notation for
/// exponents in [-4, 16), scientific (`1e+16`) otherwise.
pub(crate) fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // `{:e}` gives the shortest round-tripping digits: "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exponent) {
        let point = exponent + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{body}")
    } else {
        let (head, tail) = digits.split_at(1);
        let fraction = if tail.is_empty() {
            String::new()
        } else {
            format!(".{tail}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{head}{fraction}e{exp_sign}{:02}", exponent.abs())
    }
}

fn dump_string(s: &str, ensure_ascii: bool, out: &mut String) -> Result<(), Error> {
    grow(out, crate::bounded::sizes::json_string_len(s, ensure_ascii))?;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::python_float_repr;

    #[test]
    fn floats_print_as_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123.456, "123.456"),
            (1e100, "1e+100"),
            (f64::INFINITY, "Infinity"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float_repr(value), expected, "{value}");
        }
    }
}
