//! Rendering untrusted templates in bounded memory and time.
//!
//! minijinja bounds instructions (fuel) and recursion, but one `~` can double a string, so
//! a few dozen instructions reach gigabytes. Before a render, [`harden`] rewrites the
//! compiled instructions so that everything that builds a value goes through a check:
//!
//! - `~`, `+` and `*` become calls of checked versions that size their result first;
//! - results of calls, filters, slices and list/map literals are charged to the render's
//!   memory budget (strings by length, containers by item count), and their nesting depth
//!   is bounded (deep nesting would overflow the stack when the value is dropped);
//! - raw template text is emitted through the formatter, which charges every emitted byte,
//!   captured (`{% set x %}…{% endset %}`) or not;
//! - number literals become calls (`__llmjp_number(3)`), so that minijinja cannot fold
//!   `'x' * 99999999` or `[s] * 10**9 ~ ''` into a huge constant while compiling;
//! - a tick before every call, every loop iteration and every 32 straight-line
//!   instructions checks the wall-clock deadline.
//!
//! Filters and methods that can amplify their input (`indent`, `replace`, `join`, `format`,
//! `batch`, `string`, `pprint`, `tojson`) size their output before building it. The budget
//! counts every byte a render creates, so it bounds both the peak memory and, with the
//! deadline, the work; see [`RenderLimits`].

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use minijinja::machinery::{tokenize, Instruction, Instructions, Token, WhitespaceConfig};
use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Output, State};

/// Limits of one render of an untrusted template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderLimits {
    /// Instruction budget (minijinja fuel).
    pub fuel: u64,
    /// Largest rendered prompt, in bytes.
    pub max_output_bytes: usize,
    /// Bytes a render may create in all (strings by length, lists and maps at 32 bytes an
    /// item), counted cumulatively: an upper bound on its peak memory.
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
const ITEM_BYTES: usize = 32;
/// Straight-line instructions between two deadline checks.
const TICK_EVERY: usize = 32;

const NUMBER: &str = "__llmjp_number";
const TICK: &str = "llmjp:tick";
const CONCAT: &str = "llmjp:concat";
const ADD: &str = "llmjp:add";
const MUL: &str = "llmjp:mul";
const ACCOUNT: &str = "llmjp:account";

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

fn tick() -> Result<(), Error> {
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
struct CappedString {
    text: String,
    limit: usize,
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
fn display_len(value: &Value) -> Result<usize, Error> {
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
fn display_string(values: &[&Value]) -> Result<String, Error> {
    let mut out = CappedString {
        text: String::new(),
        limit: bytes_left(),
    };
    for v in values {
        write!(out, "{v}").map_err(|_| fail(Exceeded::Memory))?;
    }
    Ok(out.text)
}

/// What a value costs: its bytes for strings, [`ITEM_BYTES`] an item for containers.
fn cost(value: &Value) -> usize {
    match value.kind() {
        ValueKind::String | ValueKind::Bytes => value.as_str().map_or(0, str::len),
        ValueKind::Seq | ValueKind::Map => value.len().unwrap_or(0).saturating_mul(ITEM_BYTES),
        _ => 0,
    }
}

/// Fails when containers nest deeper than [`MAX_NESTING`] (dropping or printing a deeper
/// value would recurse that deep). The walk checks the deadline as it goes.
fn check_nesting(value: &Value) -> Result<(), Error> {
    fn walk(value: &Value, level: usize, visits: &mut usize) -> Result<(), Error> {
        if !matches!(value.kind(), ValueKind::Seq | ValueKind::Map) {
            return Ok(());
        }
        if level >= MAX_NESTING {
            return Err(fail(Exceeded::Nesting));
        }
        *visits += 1;
        if (*visits).is_multiple_of(4096) {
            tick()?;
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
                repeated.len().unwrap_or(0).saturating_mul(ITEM_BYTES)
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

/// Registers the checked operators and the bounded formatter and filters on `env`.
pub(crate) fn install(env: &mut Environment<'static>) {
    env.add_function(NUMBER, |n: Value| n);
    env.add_function(TICK, |_: Rest<Value>| tick().map(|()| Value::UNDEFINED));
    env.add_function(CONCAT, concat);
    env.add_function(ADD, add);
    env.add_function(MUL, mul);
    env.add_function(ACCOUNT, account);
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
}

fn write_error(_: fmt::Error) -> Error {
    Error::new(ErrorKind::WriteFailure, "failed to write output")
}

/// The checks a method call needs before pycompat builds its result.
pub(crate) fn check_method(name: &str, receiver: &Value, args: &[Value]) -> Result<(), Error> {
    tick()?;
    if let Some(s) = receiver.as_str() {
        match (name, args) {
            ("replace", [from, to, ..]) => check_replace(s, from, to)?,
            ("join", [items, ..]) => check_join(items, s.len())?,
            ("format", _) => check_format(s, args)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_replace(s: &str, from: &Value, to: &Value) -> Result<(), Error> {
    let from = from.as_str().unwrap_or_default();
    let to_len = display_len(to)?;
    let hits = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).count()
    };
    check_len(s.len().saturating_add(hits.saturating_mul(to_len)))
}

fn check_join(items: &Value, separator: usize) -> Result<(), Error> {
    let mut total = 0usize;
    for item in items.try_iter()? {
        total = total
            .saturating_add(display_len(&item)?)
            .saturating_add(separator);
        check_len(total)?;
    }
    Ok(())
}

/// printf- and `str.format`-style widths come from numbers in the format string or in the
/// arguments (`%*d`): their sum bounds the padding.
fn check_format(format: &str, args: &[Value]) -> Result<(), Error> {
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
    }
    check_len(total)
}

mod filters {
    //! Bounded versions of the filters that can make more than they are given: each sizes
    //! its result, then calls minijinja's own filter (the result is charged after the call).

    use super::*;
    use minijinja::filters as builtin;

    pub(super) fn install(env: &mut Environment<'static>) {
        env.add_filter("indent", indent);
        env.add_filter("replace", replace);
        env.add_filter("join", join);
        env.add_filter("format", format);
        env.add_filter("batch", batch);
        env.add_filter("string", string);
        env.add_filter("pprint", pprint);
        env.add_filter("list", list);
    }

    /// `value` and `args` as the argument list of a filter call.
    fn call(state: &State, filter: Value, value: &Value, args: &[Value]) -> Result<Value, Error> {
        let all: Vec<Value> = std::iter::once(value.clone())
            .chain(args.iter().cloned())
            .collect();
        filter.call(state, &all)
    }

    fn indent(state: &State, value: &Value, args: Rest<Value>) -> Result<Value, Error> {
        let width = match args.first() {
            Some(w) if w.kind() == ValueKind::Number => w.as_usize().unwrap_or(usize::MAX),
            Some(w) => display_len(w)?,
            None => 4,
        };
        let text = value.as_str().unwrap_or_default();
        let lines = text.lines().count().saturating_add(1);
        check_len(width.saturating_mul(lines).saturating_add(text.len()))?;
        call(state, Value::from_function(builtin::indent), value, &args)
    }

    fn replace(state: &State, value: &Value, args: Rest<Value>) -> Result<Value, Error> {
        if let ([from, to, ..], Some(text)) = (&args[..], value.as_str()) {
            check_replace(text, from, to)?;
        }
        call(state, Value::from_function(builtin::replace), value, &args)
    }

    fn join(state: &State, value: &Value, args: Rest<Value>) -> Result<Value, Error> {
        let separator = args.first().map(display_len).transpose()?.unwrap_or(0);
        if matches!(
            value.kind(),
            ValueKind::Seq | ValueKind::Iterable | ValueKind::Map
        ) {
            check_join(value, separator)?;
        }
        call(state, Value::from_function(builtin::join), value, &args)
    }

    fn format(state: &State, value: &Value, args: Rest<Value>) -> Result<Value, Error> {
        check_format(value.as_str().unwrap_or_default(), &args)?;
        call(state, Value::from_function(builtin::format), value, &args)
    }

    fn batch(state: &State, value: &Value, args: Rest<Value>) -> Result<Value, Error> {
        let count = args.first().and_then(Value::as_usize).unwrap_or(0);
        let len = value.len().unwrap_or(0);
        check_len(len.saturating_add(count).saturating_mul(ITEM_BYTES))?;
        call(state, Value::from_function(builtin::batch), value, &args)
    }

    fn string(value: &Value) -> Result<Value, Error> {
        if value.kind() == ValueKind::String {
            return Ok(value.clone());
        }
        Ok(Value::from(display_string(&[value])?))
    }

    fn pprint(value: &Value) -> Result<Value, Error> {
        let mut out = CappedString {
            text: String::new(),
            limit: bytes_left(),
        };
        write!(out, "{value:#?}").map_err(|_| fail(Exceeded::Memory))?;
        Ok(Value::from(out.text))
    }

    fn list(state: &State, value: Value) -> Result<Value, Error> {
        if value.kind() == ValueKind::String {
            let chars = value.as_str().map_or(0, |s| s.chars().count());
            check_len(chars.saturating_mul(ITEM_BYTES))?;
        } else {
            let mut len = 0usize;
            let Ok(items) = value.try_iter() else {
                return builtin::list(state, value);
            };
            for _ in items {
                len += 1;
                check_len(len.saturating_mul(ITEM_BYTES))?;
            }
        }
        builtin::list(state, value)
    }
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
        let account_after = matches!(
            instruction,
            Instruction::CallFunction(..)
                | Instruction::CallMethod(..)
                | Instruction::CallObject(..)
                | Instruction::ApplyFilter(..)
                | Instruction::Slice
                | Instruction::BuildList(..)
                | Instruction::BuildMap(..)
        );
        match instruction {
            Instruction::StringConcat => add(&mut new, Instruction::CallFunction(CONCAT, Some(2))),
            Instruction::Add => add(&mut new, Instruction::CallFunction(ADD, Some(2))),
            Instruction::Mul => add(&mut new, Instruction::CallFunction(MUL, Some(2))),
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
