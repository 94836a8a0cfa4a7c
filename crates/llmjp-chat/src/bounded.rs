//! Rendering untrusted templates in bounded memory and time.
//!
//! minijinja bounds instructions (fuel) and recursion, but one `~` can double a string and
//! one `map('upper')` can copy a list of large strings, so a few dozen instructions reach
//! gigabytes. Every render therefore carries a byte budget
//! ([`RenderLimits::max_memory_bytes`]) that is charged for what each operation *makes*,
//! before it makes it, and a deadline:
//!
//! - the environment starts empty ([`Environment::empty`]) and every filter, test,
//!   function and method it offers is a wrapper (modules [`filters`], [`predicates`],
//!   [`functions`], [`methods`]) that charges the bytes the built-in will make, computed
//!   from its arguments ([`sizes`]), before calling it, or builds the result itself within
//!   what is left of the budget. Filters that call other filters by name (`map`,
//!   `select`, `reject`, `selectattr`, `rejectattr`) reach these same wrappers, so every
//!   per-item call is charged too;
//! - before a render, [`harden`] rewrites the compiled instructions: `~`, `+`, `*` and `in`
//!   become calls of checked versions that size their result first, and `==`, `!=`, `<`,
//!   `<=`, `>`, `>=` calls that refuse to compare more than [`MAX_COMPARED_BYTES`] (chained
//!   comparisons such as `a < b < c` keep minijinja's own operator); results of function
//!   calls, slices and list/map literals are charged when made; raw template text is
//!   emitted through the formatter, which charges every emitted byte, captured
//!   (`{% set x %}…{% endset %}`) or not;
//! - number literals become calls (`__llmjp_number(3)`), so that minijinja cannot fold
//!   `'x' * 99999999` or `[s] * 10**9 ~ ''` into a huge constant while compiling;
//! - the nesting depth of every value made is bounded (deep nesting would overflow the
//!   stack when the value is dropped), and lazy results that keep their inputs alive
//!   (`chain`, `zip`, `items`, `reverse`, `dict.items()`, …) are materialised and charged;
//! - a tick before every call, every loop iteration, every 32 straight-line instructions
//!   and inside long built-in loops checks the wall-clock deadline.
//!
//! The exact accounting is documented on [`RenderLimits::max_memory_bytes`].

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use minijinja::machinery::{tokenize, Instruction, Instructions, Token, WhitespaceConfig};
use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Output, State};

mod filters;
mod functions;
pub(crate) mod methods;
mod predicates;
pub(crate) mod sizes;

/// Limits of one render of an untrusted template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderLimits {
    /// Instruction budget (minijinja fuel).
    pub fuel: u64,
    /// Largest rendered prompt, in bytes.
    pub max_output_bytes: usize,
    /// Bytes a render may make in all, counted cumulatively (nothing is given back when a
    /// value is dropped), so that it bounds the render's peak memory and, with the
    /// deadline, its work. A string counts its length in bytes; a list or map counts
    /// 32 bytes per item (the items themselves are counted where they were made). What is
    /// counted, each time before (or, for the last two, while) it is made:
    ///
    /// - every string, list or map a filter, test or method makes, *including* the calls
    ///   that `map`, `select`, `reject`, `selectattr` and `rejectattr` make per item: the
    ///   exact size of the result where a linear scan of the input gives it (`upper`,
    ///   `lower`, `title`, `replace`, `split`, `lines`, `escape`, `str.split()`, …), an
    ///   upper bound otherwise (`indent`, `format`, `batch`, `slice`, `groupby`, …), plus
    ///   the printed length of any non-string input the built-in prints to text;
    /// - the result of `~`, `+` and `*` on strings and lists, sized before it is built;
    /// - the result of every function or macro call, slice, and list or map literal;
    /// - every byte written to the output or to a `{% set %}` capture;
    /// - text that `tojson`, `string`, `pprint`, `debug` and `strftime_now` write, as they
    ///   write it: they stop with this error once it would not fit.
    ///
    /// Exceeding it ends the render with [`ChatError::MemoryLimit`](crate::ChatError::MemoryLimit),
    /// before the value is made. Lists and maps also nest at most 64 deep (a typed render
    /// error), and numbers, booleans and lazy ranges (at most 100,000 numbers) count
    /// nothing. Because growth slack (a `String` or `Vec` at up to twice its length, a
    /// value next to its printed copy) is not counted, the peak heap of a render stays
    /// within a small multiple of this budget (the tests check 4× + 8 MiB).
    pub max_memory_bytes: usize,
    /// Wall-clock budget of a render.
    pub timeout: Duration,
}

/// Default instruction budget of one render: far above what real templates use for long
/// conversations, far below what it takes to hang a process.
pub const DEFAULT_FUEL: u64 = 5_000_000;
/// Default limit on the size of a rendered prompt.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 16 << 20;
/// Default memory budget of one render.
pub const DEFAULT_MAX_MEMORY_BYTES: usize = 64 << 20;
/// Default wall-clock budget of one render.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for RenderLimits {
    fn default() -> Self {
        Self {
            fuel: DEFAULT_FUEL,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Deepest nesting of lists and maps a render may build.
pub(crate) const MAX_NESTING: usize = 64;
/// Bytes charged per list or map item.
pub(crate) const ITEM_BYTES: usize = 32;
/// Straight-line instructions between two deadline checks.
const TICK_EVERY: usize = 32;

const NUMBER: &str = "__llmjp_number";
const TICK: &str = "llmjp:tick";
const CONCAT: &str = "llmjp:concat";
const ADD: &str = "llmjp:add";
const MUL: &str = "llmjp:mul";
const ACCOUNT: &str = "llmjp:account";
const CONTAINS: &str = "llmjp:contains";
const EQ: &str = "llmjp:eq";
const NE: &str = "llmjp:ne";
const LT: &str = "llmjp:lt";
const LTE: &str = "llmjp:lte";
const GT: &str = "llmjp:gt";
const GTE: &str = "llmjp:gte";

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
    pub(crate) fn install(limits: &RenderLimits) -> Self {
        let deadline = Instant::now()
            .checked_add(limits.timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        BUDGET.with(|b| {
            *b.borrow_mut() = Some(Budget {
                bytes_left: limits.max_memory_bytes,
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

fn fail(kind: Exceeded) -> Error {
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

/// Charges a freshly built value and bounds its nesting; returns it unchanged.
fn account(value: Value) -> Result<Value, Error> {
    charge(cost(&value))?;
    check_nesting(&value)?;
    Ok(value)
}

/// `a ~ b`.
fn concat(args: Rest<Value>) -> Result<Value, Error> {
    let [a, b] = two(&args)?;
    let text = display_string(&[a, b])?;
    charge(text.len())?;
    Ok(Value::from(text))
}

/// `a + b`: strings and sequences are sized first, numbers go to minijinja.
fn add(state: &State, args: Rest<Value>) -> Result<Value, Error> {
    let [a, b] = two(&args)?;
    if a.is_integer() && b.is_integer() {
        if let Some(sum) = a
            .as_i64()
            .zip(b.as_i64())
            .and_then(|(x, y)| x.checked_add(y))
        {
            return Ok(Value::from(sum));
        }
    }
    if a.kind() == ValueKind::String && b.kind() == ValueKind::String {
        let (x, y) = (
            a.as_str().unwrap_or_default(),
            b.as_str().unwrap_or_default(),
        );
        charge(x.len().saturating_add(y.len()))?;
        return Ok(Value::from([x, y].concat()));
    }
    let sequence = |v: &Value| matches!(v.kind(), ValueKind::Seq | ValueKind::Iterable);
    if sequence(a) && sequence(b) {
        let mut items = Vec::new();
        for v in a.try_iter()?.chain(b.try_iter()?) {
            charge(ITEM_BYTES)?;
            items.push(v);
        }
        return Ok(Value::from(items));
    }
    builtin(state, "a + b", a, b)
}

/// `a * b`: repeated strings and sequences are sized first.
fn mul(state: &State, args: Rest<Value>) -> Result<Value, Error> {
    let [a, b] = two(&args)?;
    let (repeated, times) = match (a.as_usize(), b.as_usize()) {
        (Some(n), None) => (b, Some(n)),
        (_, n) => (a, n),
    };
    if let Some(n) = times {
        let unit = match repeated.kind() {
            ValueKind::String => repeated.as_str().map_or(0, str::len),
            ValueKind::Seq | ValueKind::Iterable => {
                let count = item_count(repeated)?;
                if count == 0 {
                    // minijinja would loop `n` times to repeat nothing.
                    return Ok(Value::from(Vec::<Value>::new()));
                }
                count.saturating_mul(ITEM_BYTES)
            }
            _ => 0,
        };
        charge(unit.saturating_mul(n))?;
    }
    builtin(state, "a * b", a, b)
}

/// minijinja's own operator on `a` and `b`, once the size of its result is known to fit.
fn builtin(state: &State, expression: &str, a: &Value, b: &Value) -> Result<Value, Error> {
    let env = state.env();
    let compiled = env.compile_expression(expression)?;
    compiled.eval(minijinja::context! { a => a, b => b })
}

fn two(args: &[Value]) -> Result<[&Value; 2], Error> {
    match args {
        [a, b] => Ok([a, b]),
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            "internal operator takes two arguments",
        )),
    }
}

/// `needle in container`: minijinja prints a non-string needle to look for it in a string,
/// so that text is sized first; containers are searched with deadline checks.
fn contains(args: Rest<Value>) -> Result<Value, Error> {
    let [needle, container] = two(&args)?;
    if let Some(haystack) = container.as_str() {
        let needle = text_of(needle)?;
        if let Cow::Owned(printed) = &needle {
            charge(printed.len())?;
        }
        return Ok(Value::from(haystack.contains(needle.as_ref())));
    }
    if matches!(container.kind(), ValueKind::Seq | ValueKind::Iterable) {
        for (i, item) in container.try_iter()?.enumerate() {
            if i.is_multiple_of(1024) {
                tick()?;
            }
            if &item == needle {
                return Ok(Value::from(true));
            }
        }
        return Ok(Value::from(false));
    }
    if container.is_undefined() {
        return Ok(Value::from(false));
    }
    match container.as_object() {
        Some(object) if container.kind() == ValueKind::Map => {
            Ok(Value::from(object.get_value(needle).is_some()))
        }
        Some(_) => Ok(Value::from(false)),
        None => Err(Error::new(
            ErrorKind::InvalidOperation,
            "cannot perform a containment check on this value",
        )),
    }
}

/// Fails as the time budget when comparing two containers could compare more than
/// [`MAX_COMPARED_BYTES`] (strings alone compare in one bounded pass).
fn compare(a: &Value, b: &Value) -> Result<(), Error> {
    let container = |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
        )
    };
    if !(container(a) && container(b)) {
        return Ok(());
    }
    let work = compared_size(a, MAX_COMPARED_BYTES)?.min(compared_size(b, MAX_COMPARED_BYTES)?);
    if work > MAX_COMPARED_BYTES {
        return Err(fail(Exceeded::Time));
    }
    Ok(())
}

/// The bytes comparing `value` with an equal value reads (string lengths, one per other
/// value), counted up to just past `cap`.
fn compared_size(value: &Value, cap: usize) -> Result<usize, Error> {
    struct Walk {
        total: usize,
        visits: usize,
        cap: usize,
    }
    fn walk(value: &Value, level: usize, w: &mut Walk) -> Result<(), Error> {
        w.total = w.total.saturating_add(value.as_str().map_or(1, str::len));
        w.visits += 1;
        if w.visits.is_multiple_of(4096) {
            tick()?;
        }
        let container = matches!(
            value.kind(),
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
        );
        if w.total > w.cap || level >= MAX_NESTING || !container {
            return Ok(());
        }
        let Ok(items) = value.try_iter() else {
            return Ok(());
        };
        let map = value.kind() == ValueKind::Map;
        for item in items {
            if map {
                let entry = value.get_item(&item).unwrap_or_default();
                walk(&entry, level + 1, w)?;
            }
            walk(&item, level + 1, w)?;
            if w.total > w.cap {
                break;
            }
        }
        Ok(())
    }
    let mut w = Walk {
        total: 0,
        visits: 0,
        cap,
    };
    walk(value, 0, &mut w)?;
    Ok(w.total)
}

/// Registers the checked operators, the bounded formatter and the wrapped built-ins
/// (filters, tests, functions) on `env`, which must start empty
/// ([`Environment::empty`]): only what is registered here can run.
pub(crate) fn install(env: &mut Environment<'static>) {
    env.add_function(NUMBER, |n: Value| n);
    env.add_function(TICK, |_: Rest<Value>| tick().map(|()| Value::UNDEFINED));
    env.add_function(CONCAT, concat);
    env.add_function(ADD, add);
    env.add_function(MUL, mul);
    env.add_function(ACCOUNT, account);
    env.add_function(CONTAINS, contains);
    env.add_function(EQ, |a: Value, b: Value| compare(&a, &b).map(|()| a == b));
    env.add_function(NE, |a: Value, b: Value| compare(&a, &b).map(|()| a != b));
    env.add_function(LT, |a: Value, b: Value| compare(&a, &b).map(|()| a < b));
    env.add_function(LTE, |a: Value, b: Value| compare(&a, &b).map(|()| a <= b));
    env.add_function(GT, |a: Value, b: Value| compare(&a, &b).map(|()| a > b));
    env.add_function(GTE, |a: Value, b: Value| compare(&a, &b).map(|()| a >= b));
    env.set_formatter(|out: &mut Output, _: &State, value: &Value| {
        tick()?;
        if let Some(s) = value.as_str() {
            charge(s.len())?;
            return out.write_str(s).map_err(write_error);
        }
        let text = display_string(&[value])?;
        charge(text.len())?;
        out.write_str(&text).map_err(write_error)
    });
    filters::install(env);
    predicates::install(env);
    functions::install(env);
}

fn write_error(_: fmt::Error) -> Error {
    Error::new(ErrorKind::WriteFailure, "failed to write output")
}

/// `source` with every number literal `N` written `(__llmjp_number(N))`: minijinja folds
/// operators on constants while compiling, before any budget applies, and every operation
/// that can grow a value (`*` with a count, a repeated list printed with `~`) needs a
/// number; without constant numbers, folded constants stay within a few times the source.
pub(crate) fn unfold_numbers(source: &str, whitespace: &WhitespaceConfig) -> Result<String, Error> {
    let mut out = String::with_capacity(source.len());
    let mut copied = 0usize;
    let mut after_dot = false;
    for token in tokenize(source, false, Default::default(), *whitespace) {
        let (token, span) = token?;
        let number = matches!(token, Token::Int(_) | Token::Int128(_) | Token::Float(_));
        // `x.0` is an item lookup, not an expression: left as it is.
        let wrap = number && !after_dot;
        after_dot = matches!(token, Token::Dot);
        if wrap {
            let (start, end) = (span.start_offset as usize, span.end_offset as usize);
            out.push_str(&source[copied..start]);
            // Parenthesised: `-f(1)` would parse as `(-f)(1)`.
            out.push('(');
            out.push_str(NUMBER);
            out.push('(');
            out.push_str(&source[start..end]);
            out.push_str("))");
            copied = end;
        }
    }
    out.push_str(&source[copied..]);
    Ok(out)
}

/// Rewrites compiled instructions so that every value the template builds is sized and
/// charged first, and the deadline is checked regularly (see the module docs).
pub(crate) fn harden<'s>(old: &Instructions<'s>) -> Instructions<'s> {
    let mut new = Instructions::new(old.name(), old.source());
    let mut index = Vec::with_capacity(old.len() + 1);
    let mut since_tick = 0usize;
    for i in 0..old.len() {
        let i = i as u32;
        let instruction = old.get(i).expect("index in range").clone();
        let add = |new: &mut Instructions<'s>, instruction: Instruction<'s>| match old.get_span(i) {
            Some(span) => new.add_with_span(instruction, span),
            None => new.add_with_line(instruction, old.get_line(i).unwrap_or(0) as u16),
        };
        index.push(new.len() as u32);
        let calls = matches!(
            instruction,
            Instruction::CallFunction(..)
                | Instruction::CallMethod(..)
                | Instruction::CallObject(..)
                | Instruction::ApplyFilter(..)
                | Instruction::PerformTest(..)
        );
        let back_edge = matches!(instruction, Instruction::Jump(target) if target <= i);
        if calls || back_edge || since_tick >= TICK_EVERY {
            add(&mut new, Instruction::CallFunction(TICK, Some(0)));
            add(&mut new, Instruction::DiscardTop);
            since_tick = 0;
        }
        since_tick += 1;
        // Filters and methods charge what they make themselves (see `filters`, `methods`).
        let account_after = matches!(
            instruction,
            Instruction::CallFunction(..)
                | Instruction::CallObject(..)
                | Instruction::Slice
                | Instruction::BuildList(..)
                | Instruction::BuildMap(..)
        );
        match instruction {
            Instruction::StringConcat => add(&mut new, Instruction::CallFunction(CONCAT, Some(2))),
            Instruction::Add => add(&mut new, Instruction::CallFunction(ADD, Some(2))),
            Instruction::Mul => add(&mut new, Instruction::CallFunction(MUL, Some(2))),
            Instruction::In => add(&mut new, Instruction::CallFunction(CONTAINS, Some(2))),
            Instruction::Eq => add(&mut new, Instruction::CallFunction(EQ, Some(2))),
            Instruction::Ne => add(&mut new, Instruction::CallFunction(NE, Some(2))),
            Instruction::Lt => add(&mut new, Instruction::CallFunction(LT, Some(2))),
            Instruction::Lte => add(&mut new, Instruction::CallFunction(LTE, Some(2))),
            Instruction::Gt => add(&mut new, Instruction::CallFunction(GT, Some(2))),
            Instruction::Gte => add(&mut new, Instruction::CallFunction(GTE, Some(2))),
            Instruction::EmitRaw(text) => {
                add(&mut new, Instruction::LoadConst(Value::from(text)));
                add(&mut new, Instruction::Emit)
            }
            other => add(&mut new, other),
        };
        if account_after {
            add(&mut new, Instruction::CallFunction(ACCOUNT, Some(1)));
        }
    }
    index.push(new.len() as u32);
    let target = |t: u32| index.get(t as usize).copied().unwrap_or(t);
    for i in 0..new.len() as u32 {
        if let Some(
            Instruction::Jump(t)
            | Instruction::JumpIfFalse(t)
            | Instruction::JumpIfFalseOrPop(t)
            | Instruction::JumpIfTrueOrPop(t)
            | Instruction::Iterate(t)
            | Instruction::BuildMacro(_, t, _),
        ) = new.get_mut(i)
        {
            *t = target(*t);
        }
    }
    new
}
