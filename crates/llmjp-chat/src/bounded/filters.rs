//! Every filter a template can use, wrapped so that the budget is charged for what it
//! makes. minijinja's own filters run behind a [`Made::Sized`] wrapper that charges the
//! bytes the call will make (computed from its arguments, see [`super::sizes`]) before
//! calling it; a few are replaced by versions that build their result within what is left
//! of the budget ([`Made::Capped`]). `map`, `select`, `reject`, `selectattr` and
//! `rejectattr` look filters and tests up by name in the environment, so their per-item
//! calls go through these wrappers too.

use minijinja::filters as builtin;
use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{Environment, Error, State};

use super::budget::{
    check_growth, conversion_len, display_len, display_string, fail, item_count, text_of, tick,
    CappedString, Exceeded, ITEM_BYTES, MAX_COMPARED_BYTES,
};
use super::sizes;
use super::wrap::{charged, Args, Made};

pub(super) fn install(env: &mut Environment<'static>) {
    for (name, original, made) in table() {
        env.add_filter(name, charged(original, made));
    }
}

/// Every filter of minijinja's `builtins` feature (2.24), with how it is charged, plus
/// Python's `tojson`.
fn table() -> Vec<(&'static str, Value, Made)> {
    use Made::{Capped, Sized};
    vec![
        (
            "safe",
            Value::from_function(builtin::safe),
            Sized(text_copy),
        ),
        (
            "escape",
            Value::from_function(builtin::escape),
            Sized(escaped),
        ),
        ("e", Value::from_function(builtin::escape), Sized(escaped)),
        ("lower", Value::from_function(builtin::lower), Sized(lower)),
        ("upper", Value::from_function(builtin::upper), Sized(upper)),
        ("title", Value::from_function(builtin::title), Sized(title)),
        (
            "capitalize",
            Value::from_function(builtin::capitalize),
            Sized(capitalize),
        ),
        (
            "replace",
            Value::from_function(builtin::replace),
            Sized(replace),
        ),
        (
            "length",
            Value::from_function(builtin::length),
            Sized(nothing),
        ),
        (
            "count",
            Value::from_function(builtin::length),
            Sized(nothing),
        ),
        (
            "dictsort",
            Value::from_function(builtin::dictsort),
            Sized(sorted_pairs),
        ),
        (
            "items",
            Value::from_function(materialised(builtin::items)),
            Sized(pairs),
        ),
        (
            "reverse",
            Value::from_function(materialised(builtin::reverse)),
            Sized(reversed),
        ),
        ("trim", Value::from_function(builtin::trim), Sized(trim)),
        ("join", Value::from_function(builtin::join), Sized(join)),
        ("split", Value::from_function(builtin::split), Sized(split)),
        ("lines", Value::from_function(builtin::lines), Sized(lines)),
        (
            "default",
            Value::from_function(builtin::default),
            Sized(nothing),
        ),
        ("d", Value::from_function(builtin::default), Sized(nothing)),
        (
            "round",
            Value::from_function(builtin::round),
            Sized(nothing),
        ),
        ("abs", Value::from_function(builtin::abs), Sized(nothing)),
        ("int", Value::from_function(builtin::int), Sized(nothing)),
        (
            "float",
            Value::from_function(builtin::float),
            Sized(nothing),
        ),
        ("attr", Value::from_function(builtin::attr), Sized(nothing)),
        (
            "first",
            Value::from_function(builtin::first),
            Sized(nothing),
        ),
        ("last", Value::from_function(builtin::last), Sized(last)),
        ("min", Value::from_function(builtin::min), Sized(compared)),
        ("max", Value::from_function(builtin::max), Sized(compared)),
        ("sort", Value::from_function(builtin::sort), Sized(sorted)),
        ("list", Value::from_function(builtin::list), Sized(items)),
        ("string", Value::from_function(string), Capped),
        ("bool", Value::from_function(builtin::bool), Sized(nothing)),
        ("batch", Value::from_function(builtin::batch), Sized(batch)),
        ("slice", Value::from_function(builtin::slice), Sized(slice)),
        ("sum", Value::from_function(builtin::sum), Sized(nothing)),
        (
            "indent",
            Value::from_function(builtin::indent),
            Sized(indent),
        ),
        (
            "select",
            Value::from_function(builtin::select),
            Sized(items),
        ),
        (
            "reject",
            Value::from_function(builtin::reject),
            Sized(items),
        ),
        (
            "selectattr",
            Value::from_function(builtin::selectattr),
            Sized(items),
        ),
        (
            "rejectattr",
            Value::from_function(builtin::rejectattr),
            Sized(items),
        ),
        ("map", Value::from_function(builtin::map), Sized(items)),
        (
            "groupby",
            Value::from_function(builtin::groupby),
            Sized(groups),
        ),
        (
            "unique",
            Value::from_function(builtin::unique),
            Sized(unique),
        ),
        (
            "chain",
            Value::from_function(materialised_rest(builtin::chain)),
            Sized(all_items),
        ),
        (
            "zip",
            Value::from_function(materialised_rest(builtin::zip)),
            Sized(tuples),
        ),
        ("pprint", Value::from_function(pprint), Capped),
        (
            "format",
            Value::from_function(builtin::format),
            Sized(format),
        ),
        ("tojson", Value::from_function(tojson), Capped),
    ]
}

// Sizers: the bytes each filter makes. Strings count their length, lists and maps
// `ITEM_BYTES` an item; a non-string input that the filter prints to text counts its
// printed length on top.

fn nothing(_: &Args<'_>) -> Result<usize, Error> {
    Ok(0)
}

/// The value's text, copied.
fn text_copy(args: &Args<'_>) -> Result<usize, Error> {
    match args.value.as_str() {
        Some(s) => Ok(s.len()),
        None => display_len(args.value),
    }
}

/// The size of `measure(text)`, plus the text itself when the value had to be printed.
fn converted(value: &Value, measure: fn(&str) -> usize) -> Result<usize, Error> {
    let text = text_of(value)?;
    Ok(measure(&text).saturating_add(conversion_len(value)?))
}

fn escaped(args: &Args<'_>) -> Result<usize, Error> {
    if args.value.is_safe() {
        return Ok(0);
    }
    converted(args.value, sizes::html_escaped_len)
}

fn lower(args: &Args<'_>) -> Result<usize, Error> {
    converted(args.value, sizes::lower_len)
}

fn upper(args: &Args<'_>) -> Result<usize, Error> {
    converted(args.value, sizes::upper_len)
}

fn title(args: &Args<'_>) -> Result<usize, Error> {
    converted(args.value, sizes::title_len)
}

fn capitalize(args: &Args<'_>) -> Result<usize, Error> {
    converted(args.value, sizes::capitalize_made)
}

fn trim(args: &Args<'_>) -> Result<usize, Error> {
    let chars = args.get(0, "chars").map_or(Ok(0), |c| conversion_len(&c))?;
    Ok(text_copy(args)?
        .saturating_add(conversion_len(args.value)?)
        .saturating_add(chars))
}

fn replace(args: &Args<'_>) -> Result<usize, Error> {
    let (Some(from), Some(to)) = (args.get(0, "old"), args.get(1, "new")) else {
        return Ok(0);
    };
    replaced(args.value, &from, &to)
}

/// What replacing `from` with `to` in `value` makes, conversions included.
pub(super) fn replaced(value: &Value, from: &Value, to: &Value) -> Result<usize, Error> {
    let text = text_of(value)?;
    let from_text = text_of(from)?;
    let to_len = text_of(to)?.len();
    let conversions = conversion_len(value)?
        .saturating_add(conversion_len(from)?)
        .saturating_add(conversion_len(to)?);
    Ok(sizes::replaced_len(&text, &from_text, to_len).saturating_add(conversions))
}

fn join(args: &Args<'_>) -> Result<usize, Error> {
    let separator = args.get(0, "d").map_or(Ok(0), |s| display_len(&s))?;
    joined_len(args.value, separator)
}

/// The length of `items` printed one after the other with `separator` bytes between.
pub(super) fn joined_len(items: &Value, separator: usize) -> Result<usize, Error> {
    let mut total = 0usize;
    let Ok(iter) = items.try_iter() else {
        return Ok(0);
    };
    for item in iter {
        total = total
            .saturating_add(display_len(&item)?)
            .saturating_add(separator);
        check_growth(total)?;
    }
    Ok(total)
}

fn split(args: &Args<'_>) -> Result<usize, Error> {
    let separator = args.get(0, "split");
    let maxsplit = args.get(1, "maxsplits").and_then(|n| n.as_i64());
    split_made(args.value, separator.as_ref(), maxsplit, 1)
}

/// What splitting `value` makes: the pieces' text and `lists` lists of their items.
pub(super) fn split_made(
    value: &Value,
    separator: Option<&Value>,
    maxsplit: Option<i64>,
    lists: usize,
) -> Result<usize, Error> {
    let text = text_of(value)?;
    let pieces = sizes::split_pieces(&text, separator.and_then(Value::as_str), maxsplit);
    Ok(text
        .len()
        .saturating_add(conversion_len(value)?)
        .saturating_add(pieces.saturating_mul(ITEM_BYTES * lists)))
}

fn lines(args: &Args<'_>) -> Result<usize, Error> {
    lines_made(args.value, 1)
}

/// What splitting `value` into lines makes: their text and `lists` lists of them.
pub(super) fn lines_made(value: &Value, lists: usize) -> Result<usize, Error> {
    let text = text_of(value)?;
    let lines = text.lines().count().saturating_add(1);
    Ok(text
        .len()
        .saturating_add(conversion_len(value)?)
        .saturating_add(lines.saturating_mul(ITEM_BYTES * lists)))
}

fn indent(args: &Args<'_>) -> Result<usize, Error> {
    let width = match args.get(0, "width") {
        Some(w) if w.kind() == ValueKind::Number => w.as_usize().unwrap_or(usize::MAX),
        Some(w) => display_len(&w)?,
        None => 4,
    };
    let text = text_of(args.value)?;
    let lines = text.lines().count().saturating_add(1);
    Ok(width
        .saturating_add(ITEM_BYTES)
        .saturating_mul(lines)
        .saturating_add(text.len())
        .saturating_add(conversion_len(args.value)?))
}

fn format(args: &Args<'_>) -> Result<usize, Error> {
    formatted_len(&text_of(args.value)?, args.positional)
}

/// An upper bound of printf- or `str.format`-style formatting: the format, every argument
/// printed, and every number in the format or the arguments as a padding width (`%*d`).
pub(super) fn formatted_len(format: &str, args: &[Value]) -> Result<usize, Error> {
    let mut total = format.len();
    for number in format
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
    {
        total = total.saturating_add(number.parse::<usize>().unwrap_or(usize::MAX));
    }
    for arg in args {
        total = total.saturating_add(display_len(arg)?);
        if let Some(n) = arg.as_i64() {
            total = total.saturating_add(n.unsigned_abs() as usize);
        }
        check_growth(total)?;
    }
    Ok(total)
}

/// Makes nothing, but fails as the time budget when comparing the value's string items
/// (about `n·log2(n)` comparisons of up to the longest one) could exceed
/// [`MAX_COMPARED_BYTES`] (minijinja's `sort`, `dictsort`, `unique`, `min` and `max`
/// compare whole strings with no deadline check inside).
fn compared(args: &Args<'_>) -> Result<usize, Error> {
    let Ok(iter) = args.value.try_iter() else {
        return Ok(0);
    };
    let (mut count, mut longest) = (0usize, 0usize);
    for item in iter {
        tick_every(count)?;
        count += 1;
        longest = longest.max(item.as_str().map_or(0, str::len));
    }
    let rounds = (usize::BITS - count.leading_zeros()) as usize + 1;
    if count.saturating_mul(rounds).saturating_mul(longest) > MAX_COMPARED_BYTES {
        return Err(fail(Exceeded::Time));
    }
    Ok(0)
}

fn sorted(args: &Args<'_>) -> Result<usize, Error> {
    compared(args)?;
    items(args)
}

fn sorted_pairs(args: &Args<'_>) -> Result<usize, Error> {
    compared(args)?;
    pairs(args)
}

/// A list of the value's items.
fn items(args: &Args<'_>) -> Result<usize, Error> {
    Ok(item_count(args.value)?.saturating_mul(ITEM_BYTES))
}

fn last(args: &Args<'_>) -> Result<usize, Error> {
    match args.value.kind() {
        ValueKind::Iterable => items(args),
        _ => Ok(0),
    }
}

fn reversed(args: &Args<'_>) -> Result<usize, Error> {
    match args.value.as_str() {
        Some(s) => Ok(s.len()),
        None => items(args),
    }
}

/// A list of `[key, value]` pairs.
fn pairs(args: &Args<'_>) -> Result<usize, Error> {
    Ok(item_count(args.value)?.saturating_mul(3 * ITEM_BYTES))
}

/// Groups: each item in a group list, each group a `(grouper, list)` pair.
fn groups(args: &Args<'_>) -> Result<usize, Error> {
    Ok(item_count(args.value)?.saturating_mul(4 * ITEM_BYTES))
}

/// The list, and the lower-cased copy of each string it compares (case-insensitive
/// `unique` keeps one per distinct item).
fn unique(args: &Args<'_>) -> Result<usize, Error> {
    compared(args)?;
    let mut total = 0usize;
    let attribute = args.get(usize::MAX, "attribute");
    let Ok(iter) = args.value.try_iter() else {
        return Ok(0);
    };
    for item in iter {
        let key = match attribute.as_ref().and_then(Value::as_str) {
            Some(path) => lookup_path(&item, path),
            None => item,
        };
        let copy = key.as_str().map_or(0, sizes::lower_len);
        total = total.saturating_add(ITEM_BYTES).saturating_add(copy);
        check_growth(total)?;
    }
    Ok(total)
}

/// `value.a.0.b` as minijinja's `attribute=` arguments look it up.
fn lookup_path(value: &Value, path: &str) -> Value {
    path.split('.')
        .fold(value.clone(), |v, part| match part.parse::<i64>() {
            Ok(i) => v.get_item(&Value::from(i)).unwrap_or_default(),
            Err(_) => v.get_attr(part).unwrap_or_default(),
        })
}

fn batch(args: &Args<'_>) -> Result<usize, Error> {
    let len = item_count(args.value)?;
    let count = args.count(0, "linecount");
    Ok(len
        .saturating_mul(2)
        .saturating_add(count)
        .saturating_mul(ITEM_BYTES))
}

fn slice(args: &Args<'_>) -> Result<usize, Error> {
    let len = item_count(args.value)?;
    let count = args.count(0, "slices");
    Ok(len.saturating_add(count).saturating_mul(2 * ITEM_BYTES))
}

/// The items of the value and of every argument, in one list.
fn all_items(args: &Args<'_>) -> Result<usize, Error> {
    let mut total = item_count(args.value)?;
    for arg in args.positional {
        total = total.saturating_add(item_count(arg)?);
    }
    Ok(total.saturating_mul(ITEM_BYTES))
}

/// A list of tuples, one item from each input.
fn tuples(args: &Args<'_>) -> Result<usize, Error> {
    let inputs = args.positional.len() + 1;
    let mut shortest = item_count(args.value)?;
    for arg in args.positional {
        shortest = shortest.min(item_count(arg)?);
    }
    Ok(shortest
        .saturating_mul(inputs + 1)
        .saturating_mul(ITEM_BYTES))
}

// Filters that build their result themselves (`Made::Capped`).

fn string(value: &Value) -> Result<Value, Error> {
    if value.kind() == ValueKind::String {
        return Ok(value.clone());
    }
    Ok(Value::from(display_string(&[value])?))
}

fn pprint(value: &Value) -> Result<Value, Error> {
    use std::fmt::Write as _;
    let mut out = CappedString::within_budget();
    write!(out, "{value:#?}").map_err(|_| fail(Exceeded::Memory))?;
    Ok(Value::from(out.text))
}

fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<String, Error> {
    crate::pyjson::tojson_filter(value, &args, kwargs)
}

/// A filter whose lazy result keeps its input alive, made to return a list (or a string)
/// instead, so that nesting checks see what it holds.
fn materialised(
    filter: fn(&Value) -> Result<Value, Error>,
) -> impl Fn(&Value) -> Result<Value, Error> + Send + Sync + 'static {
    move |value: &Value| materialise(filter(value)?)
}

/// [`materialised`] for filters that take further arguments.
fn materialised_rest(
    filter: fn(&State, Value, Rest<Value>) -> Result<Value, Error>,
) -> impl Fn(&State, Value, Rest<Value>) -> Result<Value, Error> + Send + Sync + 'static {
    move |state: &State, value: Value, rest: Rest<Value>| materialise(filter(state, value, rest)?)
}

/// A lazy sequence or map as a list or map of its items (charged by the caller's sizer).
pub(super) fn materialise(value: Value) -> Result<Value, Error> {
    match value.kind() {
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                tick_every(entries.len())?;
                let item = value.get_item(&key)?;
                entries.push((key, item));
            }
            Ok(Value::from_iter(entries))
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let mut items = Vec::new();
            for item in value.try_iter()? {
                tick_every(items.len())?;
                items.push(item);
            }
            Ok(Value::from(items))
        }
        _ => Ok(value),
    }
}

fn tick_every(count: usize) -> Result<(), Error> {
    if count.is_multiple_of(1024) {
        tick()?;
    }
    Ok(())
}
