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
//!   `<=`, `>`, `>=` calls that refuse to compare more than [`MAX_COMPARED_BYTES`] (the
//!   links of a chained comparison such as `a < b < c` are checked the same way before
//!   minijinja compares them; `in` counts what comparing the needle with every item
//!   reads); results of function
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
use std::fmt;
use std::time::Duration;

use minijinja::machinery::{tokenize, Instruction, Instructions, Token, WhitespaceConfig};
use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Output, State};

pub(crate) mod budget;
mod filters;
mod functions;
pub(crate) mod methods;
mod predicates;
pub(crate) mod sizes;
mod wrap;

use budget::{
    charge, check_nesting, cost, display_string, fail, item_count, text_of, tick, ITEM_BYTES,
    MAX_COMPARED_BYTES,
};
pub(crate) use budget::{BudgetGuard, CappedString, Exceeded, MAX_NESTING};

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
const CHAIN_CHECK: &str = "llmjp:chain_check";
const CHAIN_LEFT: &str = "llmjp:chain_left";
const CHAIN_RIGHT: &str = "llmjp:chain_right";

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
        containment_work(needle, container)?;
        return Ok(Value::from(
            container.try_iter()?.any(|item| &item == needle),
        ));
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

/// Fails as the time budget when looking for `needle` among the items of `container` (a
/// list) could compare more than [`MAX_COMPARED_BYTES`]: a list of a thousand copies of
/// one long string holds only a thousand references, yet comparing a long needle with
/// each reads every copy. Anything else passes.
fn containment_work(needle: &Value, container: &Value) -> Result<(), Error> {
    if !matches!(container.kind(), ValueKind::Seq | ValueKind::Iterable) {
        return Ok(());
    }
    let needle_size = compared_size(needle, MAX_COMPARED_BYTES)?;
    let mut work = 0usize;
    for (i, item) in container.try_iter()?.enumerate() {
        if i.is_multiple_of(1024) {
            tick()?;
        }
        // Comparing two values reads at most the smaller of them.
        let cost = compared_size(&item, needle_size)?.min(needle_size).max(1);
        work = work.saturating_add(cost);
        if work > MAX_COMPARED_BYTES {
            return Err(fail(Exceeded::Time));
        }
    }
    Ok(())
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
    env.add_function(CHAIN_CHECK, |a: Value, b: Value| {
        compare(&a, &b)?;
        containment_work(&a, &b).map(|()| Value::UNDEFINED)
    });
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
            // `a < b < c`: the operator of a link is not nameable outside minijinja, so
            // both operands are checked (as a comparison and as a containment test) by a
            // call on copies kept in two locals no template can name, then compared by
            // minijinja.
            chained @ Instruction::CompareAndPreserve(_) => {
                add(&mut new, Instruction::StoreLocal(CHAIN_RIGHT));
                add(&mut new, Instruction::StoreLocal(CHAIN_LEFT));
                for _ in 0..2 {
                    add(&mut new, Instruction::Lookup(CHAIN_LEFT));
                    add(&mut new, Instruction::Lookup(CHAIN_RIGHT));
                }
                add(&mut new, Instruction::CallFunction(CHAIN_CHECK, Some(2)));
                add(&mut new, Instruction::DiscardTop);
                add(&mut new, chained)
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
