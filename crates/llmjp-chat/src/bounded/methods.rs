//! Python methods on strings, maps and lists (minijinja-contrib's `pycompat`), wrapped:
//! each call checks the deadline and is charged for what it makes before pycompat makes
//! it. Lazy results (`dict.items()`, `.keys()`, `.values()`) are materialised as lists so
//! that the nesting check sees what they hold.

use minijinja::value::{from_args, Value, ValueKind};
use minijinja::{Error, State};

use super::budget::{charge, check_nesting, item_count, tick, ITEM_BYTES};
use super::filters::{formatted_len, joined_len, lines_made, materialise, replaced, split_made};
use super::sizes;

/// The environment's unknown-method callback: `value.method(args)` for the methods
/// pycompat knows, charged.
pub(crate) fn call(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    tick()?;
    charge(made(value, method, args)?)?;
    let result = minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)?;
    let result = if value.kind() == ValueKind::Map {
        materialise(result)?
    } else {
        result
    };
    check_nesting(&result)?;
    Ok(result)
}

/// The bytes `value.method(args)` makes.
fn made(value: &Value, method: &str, args: &[Value]) -> Result<usize, Error> {
    if value.kind() == ValueKind::Map {
        return match method {
            "keys" | "values" => Ok(item_count(value)?.saturating_mul(ITEM_BYTES)),
            "items" => Ok(item_count(value)?.saturating_mul(3 * ITEM_BYTES)),
            _ => Ok(0),
        };
    }
    let Some(s) = value.as_str() else {
        return Ok(0);
    };
    Ok(match (method, args) {
        ("upper", _) => sizes::upper_len(s),
        ("lower", _) => sizes::lower_len(s),
        ("title", _) => sizes::title_len(s),
        ("capitalize", _) => sizes::capitalize_made(s),
        ("strip" | "lstrip" | "rstrip", _) => s.len(),
        ("replace", [from, to, ..]) => replaced(value, from, to)?,
        ("split", _) => {
            let (separator, maxsplit): (Option<Value>, Option<i64>) =
                from_args(args).unwrap_or((None, None));
            // pycompat collects minijinja's list into a second one.
            split_made(value, separator.as_ref(), maxsplit, 2)?
        }
        ("splitlines", _) => lines_made(value, 1)?,
        ("format", _) => formatted_len(s, args)?,
        ("join", [items, ..]) => joined_len(items, s.len())?,
        // The rest (`count`, `find`, `startswith`, `isdigit`, …) make a number or a bool.
        _ => 0,
    })
}
