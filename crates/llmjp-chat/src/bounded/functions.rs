//! The global functions a template can call: minijinja's `range`, `dict` and `namespace`
//! behind the deadline, and a `debug` that prints within the budget. Their results are
//! charged by the `llmjp:account` call that [`super::harden`] places after every function
//! call. `raise_exception` and `strftime_now` live with the template (`crate::template`).

use std::fmt::Write as _;

use minijinja::functions as builtin;
use minijinja::value::{Rest, Value};
use minijinja::{Environment, Error, State};

use super::budget::{fail, CappedString, Exceeded};
use super::wrap::{charged, Made};

pub(super) fn install(env: &mut Environment<'static>) {
    // `range` is lazy and minijinja refuses more than 100,000 numbers; lists made from it
    // are charged by the filters that make them.
    for (name, original) in [
        ("range", Value::from_function(builtin::range)),
        ("dict", Value::from_function(builtin::dict)),
        ("namespace", Value::from_function(builtin::namespace)),
    ] {
        let call = charged(original, Made::Sized(|_| Ok(0)));
        env.add_function(name, call);
    }
    env.add_function("debug", debug);
}

/// minijinja's `debug`, printed within what is left of the budget.
fn debug(state: &State, args: Rest<Value>) -> Result<String, Error> {
    let mut out = CappedString::within_budget();
    let written = match &args[..] {
        [] => write!(out, "{state:#?}"),
        [one] => write!(out, "{one:#?}"),
        all => write!(out, "{all:#?}"),
    };
    written.map_err(|_| fail(Exceeded::Memory))?;
    Ok(out.text)
}
