//! Every test (`is …`) a template can use, wrapped: tests make only a boolean, but some
//! print a non-string argument to compare it as text (`is startingwith`, `is in`, …), and
//! `select`/`reject` call them once per item, so each call checks the deadline and is
//! charged for those conversions.

use minijinja::tests as builtin;
use minijinja::value::Value;
use minijinja::{Environment, Error};

use super::budget::conversion_len;
use super::wrap::{charged, Args, Made};

pub(super) fn install(env: &mut Environment<'static>) {
    for (name, original, made) in table() {
        let call = charged(original, made);
        env.add_test(
            name,
            move |state: &minijinja::State, args: minijinja::value::Rest<Value>| {
                call(state, args).map(|v| v.is_true())
            },
        );
    }
}

/// Every test of minijinja's `builtins` feature (2.24), with how it is charged.
fn table() -> Vec<(&'static str, Value, Made)> {
    use Made::Sized;
    vec![
        (
            "undefined",
            Value::from_function(builtin::is_undefined),
            Sized(nothing),
        ),
        (
            "defined",
            Value::from_function(builtin::is_defined),
            Sized(nothing),
        ),
        (
            "none",
            Value::from_function(builtin::is_none),
            Sized(nothing),
        ),
        (
            "safe",
            Value::from_function(builtin::is_safe),
            Sized(nothing),
        ),
        (
            "escaped",
            Value::from_function(builtin::is_safe),
            Sized(nothing),
        ),
        (
            "boolean",
            Value::from_function(builtin::is_boolean),
            Sized(nothing),
        ),
        ("odd", Value::from_function(builtin::is_odd), Sized(nothing)),
        (
            "even",
            Value::from_function(builtin::is_even),
            Sized(nothing),
        ),
        (
            "divisibleby",
            Value::from_function(builtin::is_divisibleby),
            Sized(nothing),
        ),
        (
            "number",
            Value::from_function(builtin::is_number),
            Sized(nothing),
        ),
        (
            "integer",
            Value::from_function(builtin::is_integer),
            Sized(nothing),
        ),
        (
            "int",
            Value::from_function(builtin::is_integer),
            Sized(nothing),
        ),
        (
            "float",
            Value::from_function(builtin::is_float),
            Sized(nothing),
        ),
        (
            "string",
            Value::from_function(builtin::is_string),
            Sized(nothing),
        ),
        (
            "sequence",
            Value::from_function(builtin::is_sequence),
            Sized(nothing),
        ),
        (
            "iterable",
            Value::from_function(builtin::is_iterable),
            Sized(nothing),
        ),
        (
            "mapping",
            Value::from_function(builtin::is_mapping),
            Sized(nothing),
        ),
        (
            "startingwith",
            Value::from_function(builtin::is_startingwith),
            Sized(printed),
        ),
        (
            "endingwith",
            Value::from_function(builtin::is_endingwith),
            Sized(printed),
        ),
        (
            "lower",
            Value::from_function(builtin::is_lower),
            Sized(printed),
        ),
        (
            "upper",
            Value::from_function(builtin::is_upper),
            Sized(printed),
        ),
        (
            "sameas",
            Value::from_function(builtin::is_sameas),
            Sized(nothing),
        ),
        ("eq", Value::from_function(builtin::is_eq), Sized(nothing)),
        (
            "equalto",
            Value::from_function(builtin::is_eq),
            Sized(nothing),
        ),
        ("==", Value::from_function(builtin::is_eq), Sized(nothing)),
        ("ne", Value::from_function(builtin::is_ne), Sized(nothing)),
        ("!=", Value::from_function(builtin::is_ne), Sized(nothing)),
        ("lt", Value::from_function(builtin::is_lt), Sized(nothing)),
        (
            "lessthan",
            Value::from_function(builtin::is_lt),
            Sized(nothing),
        ),
        ("<", Value::from_function(builtin::is_lt), Sized(nothing)),
        ("le", Value::from_function(builtin::is_le), Sized(nothing)),
        ("<=", Value::from_function(builtin::is_le), Sized(nothing)),
        ("gt", Value::from_function(builtin::is_gt), Sized(nothing)),
        (
            "greaterthan",
            Value::from_function(builtin::is_gt),
            Sized(nothing),
        ),
        (">", Value::from_function(builtin::is_gt), Sized(nothing)),
        ("ge", Value::from_function(builtin::is_ge), Sized(nothing)),
        (">=", Value::from_function(builtin::is_ge), Sized(nothing)),
        ("in", Value::from_function(builtin::is_in), Sized(needle)),
        (
            "true",
            Value::from_function(builtin::is_true),
            Sized(nothing),
        ),
        (
            "false",
            Value::from_function(builtin::is_false),
            Sized(nothing),
        ),
        (
            "filter",
            Value::from_function(builtin::is_filter),
            Sized(nothing),
        ),
        (
            "test",
            Value::from_function(builtin::is_test),
            Sized(nothing),
        ),
    ]
}

fn nothing(_: &Args<'_>) -> Result<usize, Error> {
    Ok(0)
}

/// Tests on text print their non-string arguments.
fn printed(args: &Args<'_>) -> Result<usize, Error> {
    let mut total = conversion_len(args.value)?;
    for arg in args.positional {
        total = total.saturating_add(conversion_len(arg)?);
    }
    Ok(total)
}

/// `x is in container` prints `x` to look for it in a string container.
fn needle(args: &Args<'_>) -> Result<usize, Error> {
    match args.positional.first() {
        Some(container) if container.as_str().is_some() => conversion_len(args.value),
        _ => Ok(0),
    }
}
