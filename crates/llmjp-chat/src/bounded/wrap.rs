//! How a built-in is wrapped: its arguments as a sizer sees them ([`Args`]), how it is
//! charged ([`Made`]), and the wrapper itself ([`charged`]).

use minijinja::value::{from_args, Kwargs, Rest, Value};
use minijinja::{Error, State};

use super::budget::{charge, check_nesting, cost, tick};

/// Bytes a wrapped call will make, from its arguments.
pub(super) type Sizer = fn(&Args<'_>) -> Result<usize, Error>;

/// How a wrapped built-in is charged.
#[derive(Clone, Copy)]
pub(super) enum Made {
    /// Before the call, the bytes the sizer computes.
    Sized(Sizer),
    /// After the call, by the cost of its result: the callee builds it within what is left
    /// of the budget and fails rather than grow past it.
    Capped,
}

/// The arguments of a filter or test call: the value, then positional arguments, then
/// keyword arguments.
pub(super) struct Args<'a> {
    pub(super) value: &'a Value,
    pub(super) positional: &'a [Value],
    kwargs: Kwargs,
}

impl<'a> Args<'a> {
    pub(super) fn new(all: &'a [Value]) -> Result<Self, Error> {
        let (value, rest) = all.split_first().unwrap_or((&Value::UNDEFINED, &[]));
        let (positional, kwargs): (&[Value], Kwargs) = from_args(rest)?;
        Ok(Self {
            value,
            positional,
            kwargs,
        })
    }

    /// The argument at `index`, or passed by `name`; `None` when absent or `none`.
    pub(super) fn get(&self, index: usize, name: &str) -> Option<Value> {
        self.positional
            .get(index)
            .cloned()
            .or_else(|| self.kwargs.peek::<Option<Value>>(name).ok().flatten())
            .filter(|v| !v.is_none() && !v.is_undefined())
    }

    /// The argument at `index` or `name` as a count; 0 when absent or not a count.
    pub(super) fn count(&self, index: usize, name: &str) -> usize {
        self.get(index, name)
            .and_then(|v| v.as_usize())
            .unwrap_or(0)
    }
}

/// `original` behind the budget: ticks, charges what it makes, bounds its result's
/// nesting.
pub(super) fn charged(
    original: Value,
    made: Made,
) -> impl Fn(&State, Rest<Value>) -> Result<Value, Error> + Send + Sync + 'static {
    move |state: &State, args: Rest<Value>| {
        tick()?;
        if let Made::Sized(size) = made {
            charge(size(&Args::new(&args)?)?)?;
        }
        let result = original.call(state, &args)?;
        if let Made::Capped = made {
            charge(cost(&result))?;
        }
        check_nesting(&result)?;
        Ok(result)
    }
}
