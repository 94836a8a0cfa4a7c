//! The budget of the render running on this thread (bytes it may still make, its
//! deadline, the limit it ran into) and the primitives every wrapper charges and measures
//! with. A leaf: the rest of `bounded` and `pyjson` build on it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// Deepest nesting of lists and maps a render may build.
pub(crate) const MAX_NESTING: usize = 64;
/// Bytes charged per list or map item.
pub(crate) const ITEM_BYTES: usize = 32;
/// Most bytes one comparison, or one sorting or comparing filter, may compare (well under
/// a second of work): minijinja compares lists and strings with no deadline check inside,
/// so `[s] * 500000 == [s] * 500000` with a 10 MB `s` would run for hours.
pub(crate) const MAX_COMPARED_BYTES: usize = 1 << 30;

/// Which limit a render ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Memory,
    Time,
    Nesting,
}

struct Budget {
    bytes_left: usize,
    deadline: Instant,
    exceeded: Option<Exceeded>,
}

thread_local! {
    static BUDGET: RefCell<Option<Budget>> = const { RefCell::new(None) };
}

/// The budget of the render running on this thread, removed on drop.
pub(crate) struct BudgetGuard(());

impl BudgetGuard {
    /// Starts a budget of `max_memory_bytes` and `timeout` for this thread.
    pub(crate) fn install(max_memory_bytes: usize, timeout: Duration) -> Self {
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        BUDGET.with(|b| {
            *b.borrow_mut() = Some(Budget {
                bytes_left: max_memory_bytes,
                deadline,
                exceeded: None,
            })
        });
        Self(())
    }

    /// The limit the render ran into, if any.
    pub(crate) fn exceeded(&self) -> Option<Exceeded> {
        BUDGET.with(|b| b.borrow().as_ref().and_then(|b| b.exceeded))
    }
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        BUDGET.with(|b| *b.borrow_mut() = None);
    }
}

/// Records `kind` as the limit the render ran into and returns its error.
pub(crate) fn fail(kind: Exceeded) -> Error {
    BUDGET.with(|b| {
        if let Some(b) = b.borrow_mut().as_mut() {
            b.exceeded.get_or_insert(kind);
        }
    });
    let message = match kind {
        Exceeded::Memory => "render memory budget exceeded",
        Exceeded::Time => "render time budget exceeded",
        Exceeded::Nesting => "values nested too deeply",
    };
    Error::new(ErrorKind::InvalidOperation, message)
}

/// The error of a built-in that would make more than what is left of the budget.
pub(crate) fn memory_exceeded() -> Error {
    fail(Exceeded::Memory)
}

/// Bytes this render may still create (unbounded outside a render).
fn bytes_left() -> usize {
    BUDGET.with(|b| b.borrow().as_ref().map_or(usize::MAX, |b| b.bytes_left))
}

/// Takes `bytes` from the budget, or fails without taking anything.
pub(crate) fn charge(bytes: usize) -> Result<(), Error> {
    let ok = BUDGET.with(|b| match b.borrow_mut().as_mut() {
        Some(b) if b.bytes_left >= bytes => {
            b.bytes_left -= bytes;
            true
        }
        Some(_) => false,
        None => true,
    });
    if ok {
        Ok(())
    } else {
        Err(fail(Exceeded::Memory))
    }
}

/// Fails when `len` bytes would not fit in what is left of the budget.
pub(crate) fn check_len(len: usize) -> Result<(), Error> {
    if len > bytes_left() {
        Err(fail(Exceeded::Memory))
    } else {
        Ok(())
    }
}

/// For code that builds a result piece by piece: fails once `len` bytes no longer fit, or
/// the deadline has passed.
pub(crate) fn check_growth(len: usize) -> Result<(), Error> {
    check_len(len)?;
    tick()
}

/// Fails once the render's deadline has passed.
pub(crate) fn tick() -> Result<(), Error> {
    let late = BUDGET.with(|b| {
        b.borrow()
            .as_ref()
            .is_some_and(|b| Instant::now() > b.deadline)
    });
    if late {
        Err(fail(Exceeded::Time))
    } else {
        Ok(())
    }
}

/// A `fmt::Write` that fails instead of growing past `limit`.
pub(crate) struct CappedString {
    pub(crate) text: String,
    pub(crate) limit: usize,
}

impl CappedString {
    /// An empty string that may grow to what is left of the budget.
    pub(crate) fn within_budget() -> Self {
        Self {
            text: String::new(),
            limit: bytes_left(),
        }
    }
}

impl fmt::Write for CappedString {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.text.len() + s.len() > self.limit {
            return Err(fmt::Error);
        }
        self.text.push_str(s);
        Ok(())
    }
}

/// Counts what `Display` would write, stopping once past `limit`.
struct CappedCount {
    len: usize,
    limit: usize,
}

impl fmt::Write for CappedCount {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.len += s.len();
        if self.len > self.limit {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// The length of `value` as text, failing when it would not fit the budget.
pub(crate) fn display_len(value: &Value) -> Result<usize, Error> {
    if let Some(s) = value.as_str() {
        return Ok(s.len());
    }
    let mut count = CappedCount {
        len: 0,
        limit: bytes_left(),
    };
    write!(count, "{value}").map_err(|_| fail(Exceeded::Memory))?;
    Ok(count.len)
}

/// `values` as one string, built only if it fits in what is left of the budget.
pub(crate) fn display_string(values: &[&Value]) -> Result<String, Error> {
    let mut out = CappedString {
        text: String::new(),
        limit: bytes_left(),
    };
    for v in values {
        write!(out, "{v}").map_err(|_| fail(Exceeded::Memory))?;
    }
    Ok(out.text)
}

/// The bytes a built-in makes converting `value` to text: none for strings, their
/// printed length for anything else (minijinja prints non-strings to convert them).
pub(crate) fn conversion_len(value: &Value) -> Result<usize, Error> {
    match value.as_str() {
        Some(_) => Ok(0),
        None => display_len(value),
    }
}

/// `value` as text: borrowed for strings, printed (within the budget) otherwise.
pub(crate) fn text_of(value: &Value) -> Result<Cow<'_, str>, Error> {
    match value.as_str() {
        Some(s) => Ok(Cow::Borrowed(s)),
        None => Ok(Cow::Owned(display_string(&[value])?)),
    }
}

/// How many items iterating `value` yields (characters for strings), counted without
/// keeping them; fails once their [`ITEM_BYTES`] no longer fit the budget.
pub(crate) fn item_count(value: &Value) -> Result<usize, Error> {
    if let Some(s) = value.as_str() {
        return Ok(s.chars().count());
    }
    if let Some(len) = value.len() {
        return Ok(len);
    }
    let Ok(items) = value.try_iter() else {
        return Ok(0);
    };
    let mut count = 0usize;
    for _ in items {
        count += 1;
        if count.is_multiple_of(1024) {
            check_growth(count.saturating_mul(ITEM_BYTES))?;
        }
    }
    Ok(count)
}

/// What a value costs: its bytes for strings, [`ITEM_BYTES`] an item for containers.
pub(crate) fn cost(value: &Value) -> usize {
    match value.kind() {
        ValueKind::String | ValueKind::Bytes => value.as_str().map_or(0, str::len),
        ValueKind::Seq | ValueKind::Map => value.len().unwrap_or(0).saturating_mul(ITEM_BYTES),
        _ => 0,
    }
}

/// Fails when containers (lazy iterables included) nest deeper than [`MAX_NESTING`]
/// (dropping or printing a deeper value would recurse that deep). The walk checks the
/// deadline as it goes.
pub(crate) fn check_nesting(value: &Value) -> Result<(), Error> {
    fn walk(value: &Value, level: usize, visits: &mut usize) -> Result<(), Error> {
        *visits += 1;
        if (*visits).is_multiple_of(4096) {
            tick()?;
        }
        if !matches!(
            value.kind(),
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
        ) {
            return Ok(());
        }
        if level >= MAX_NESTING {
            return Err(fail(Exceeded::Nesting));
        }
        let Ok(items) = value.try_iter() else {
            return Ok(());
        };
        for item in items {
            let item = if value.kind() == ValueKind::Map {
                value.get_item(&item).unwrap_or_default()
            } else {
                item
            };
            walk(&item, level + 1, visits)?;
        }
        Ok(())
    }
    walk(value, 0, &mut 0)
}
