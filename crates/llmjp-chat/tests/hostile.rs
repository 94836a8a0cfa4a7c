//! Templates written to exhaust memory or time: every one ends with a typed error, quickly,
//! under the default limits. The cases that make large values inside built-ins run in a
//! child process under a 2 GiB address-space limit, with each render's peak heap measured
//! (see `hostile_support`); the CLI corpus runs the same classes through the binary, see
//! `llmjp-cli/tests/hostile.rs`.

mod hostile_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hostile_support::{is_child, peak_heap, run_in_child};
use llmjp_chat::{
    ChatError, ChatTemplate, RenderLimits, RenderOptions, DEFAULT_MAX_MEMORY_BYTES,
    MAX_MESSAGE_BYTES,
};
use proptest::prelude::*;
use serde_json::json;

#[global_allocator]
static ALLOCATOR: hostile_support::Counting = hostile_support::Counting;

/// The most heap one render may take at its peak, for a memory budget of `budget` bytes:
/// the budget counts what is made, and growth slack (a `Vec` or `String` at up to twice
/// its length, a value and its conversion side by side) stays within a small factor.
fn peak_allowed(budget: usize) -> usize {
    4 * budget + (8 << 20)
}

/// Templates that try to build a huge value: each must hit the memory budget.
const MEMORY: &[(&str, &str)] = &[
    (
        "doubling a namespace string with ~",
        "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    ),
    (
        "doubling with +",
        "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    ),
    (
        "doubling through set blocks (captures)",
        "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(60) %}{% set t %}{{ ns.s }}{{ ns.s }}{% endset %}{% set ns.s = t %}{% endfor %}",
    ),
    (
        "doubling with chained sets, no loop",
        "{% set a = 'x' * 1000000 %}{% set b = a ~ a %}{% set c = b ~ b %}{% set d = c ~ c %}{% set e = d ~ d %}{% set f = e ~ e %}{% set g = f ~ f %}{% set h = g ~ g %}{% set i = h ~ h %}{% set j = i ~ i %}",
    ),
    ("a huge repeat", "{{ ('x' * 99999999) * 99999999 }}"),
    (
        "constants that minijinja would fold while compiling",
        "{{ ([('x' * 99999999)] * 99999999) ~ '' }}",
    ),
    (
        "many folded repeats in one expression",
        "{{ 'x' * 99999999 ~ 'x' * 99999999 ~ 'x' * 99999999 ~ 'x' * 99999999 ~ 'x' * 99999999 }}",
    ),
    (
        "repeated repeats",
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s * 2 %}{% endfor %}",
    ),
    ("indent with a huge width", "{{ 'a\\nb\\nc' | indent(999999999999) }}"),
    (
        "replace growth loop (filter)",
        "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s | replace('a', ns.s) %}{% endfor %}",
    ),
    (
        "replace growth loop (method)",
        "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s.replace('a', ns.s) %}{% endfor %}",
    ),
    (
        "replace of the empty string",
        "{% set s = 'x' * 10000000 %}{{ s.replace('', s) }}",
    ),
    (
        "join of a list of one big string many times",
        "{% set s = 'x' * 10000000 %}{% set l = [s, s, s, s, s, s, s, s] %}{% set l = l + l + l + l %}{{ (l + l + l + l) | join(s) }}",
    ),
    (
        "string of a list of shared big strings",
        "{% set s = 'x' * 50000000 %}{% set l = [s, s, s, s, s, s, s, s] %}{{ l | string | length }}",
    ),
    (
        "printing a list of shared big strings",
        "{% set s = 'x' * 50000000 %}{{ [s, s, s, s, s, s, s, s] }}",
    ),
    (
        "concatenating lists of shared big strings",
        "{% set s = 'x' * 50000000 %}{{ [s, s] ~ [s, s] ~ [s, s] }}",
    ),
    ("printf width", "{{ '%999999999999s' | format('x') }}"),
    ("printf star width", "{{ '%*s' | format(999999999999, 'x') }}"),
    ("str.format width", "{{ '{:>999999999999}'.format('x') }}"),
    (
        "list doubling",
        "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | length }}",
    ),
    ("list repeat", "{{ ([1, 2, 3] * 999999999999) | length }}"),
    ("batch with a huge fill", "{{ [1] | batch(999999999999, 0) | list }}"),
    (
        "tojson of shared big strings",
        "{% set s = 'x' * 50000000 %}{{ [s, s, s, s, s, s, s, s] | tojson }}",
    ),
    ("tojson of a lazy huge list", "{{ ([1] * 999999999999) | tojson }}"),
    ("pprint of a lazy huge list", "{{ ([1] * 999999999999) | pprint }}"),
    ("printing a lazy huge list", "{{ [1] * 999999999999 }}"),
    ("sum of a lazy huge list", "{{ ([1] * 999999999999) | sum }}"),
    ("sorting a lazy huge list", "{{ ([1] * 999999999999) | sort | first }}"),
    ("unique of a lazy huge list", "{{ ([1] * 999999999999) | unique | first }}"),
    (
        "pprint of shared big strings",
        "{% set s = 'x' * 50000000 %}{{ [s, s, s, s, s, s, s, s] | pprint }}",
    ),
    (
        "many distinct big strings kept in a list",
        "{% set ns = namespace(l=[]) %}{% set s = 'x' * 10000000 %}{% for i in range(100) %}{% set ns.l = ns.l + [s ~ i] %}{% endfor %}",
    ),
];

/// Templates that try to run long without building much.
const TIME: &[(&str, &str)] = &[
    (
        "sorting many copies of a large string",
        "{% set s = 'x' * 10000000 %}{{ ([s] * 500000) | sort | length }}",
    ),
    (
        "unique of many copies of a large string",
        "{% set s = 'x' * 10000000 %}{{ ([s] * 500000) | unique | length }}",
    ),
    (
        "comparing lists of many copies of a large string",
        "{% set s = 'x' * 10000000 %}{% set l = [s] * 500000 %}{{ l == l }}",
    ),
    (
        "ordering lists of many copies of a large string",
        "{% set s = 'x' * 10000000 %}{% set l = [s] * 500000 %}{{ l < l + [1] }}",
    ),
    (
        "max of many copies of a large string",
        "{% set s = 'x' * 10000000 %}{{ ([s] * 500000) | max | length }}",
    ),
    (
        "comparing big strings in a loop",
        "{% set a = 'x' * 10000000 %}{% set b = 'x' * 10000000 %}{% for i in range(100000) %}{% if a == b %}{% endif %}{% endfor %}",
    ),
    (
        "chained comparison of lists of many copies of a large string",
        "{% set s = 'x' * 10000000 %}{% set l = [s] * 500000 %}{% set m = [s] * 500000 %}{{ l == m < 1 }}",
    ),
    (
        "chained ordering of lists of many copies of a large string",
        "{% set s = 'x' * 10000000 %}{% set l = [s] * 500000 %}{% set m = l + [1] %}{{ l < m > 1 }}",
    ),
    (
        "a large string looked for among many copies of itself",
        "{% set s = 'x' * 10000000 %}{% set t = 'x' * 9999999 ~ 'y' %}{{ t in [s] * 500000 }}",
    ),
    (
        "a large list looked for among many copies of a list",
        "{% set s = 'x' * 10000000 %}{% set l = [s] * 1000 %}{{ (l + [1]) in [l] * 500000 }}",
    ),
    (
        "chained containment among many copies",
        "{% set s = 'x' * 10000000 %}{% set t = 'x' * 9999999 ~ 'y' %}{{ t in [s] * 500000 in [[1]] }}",
    ),
    (
        "searching big strings in a loop",
        "{% set a = 'x' * 10000000 %}{% for i in range(100000) %}{% if 'y' in a %}{% endif %}{% endfor %}",
    ),
];

fn render(source: &str) -> Result<String, ChatError> {
    render_with(source, RenderLimits::default())
}

fn render_with(source: &str, limits: RenderLimits) -> Result<String, ChatError> {
    ChatTemplate::new(source, BTreeMap::new())?
        .with_limits(limits)
        .render_json(
            &json!([{"role": "user", "content": "hi"}]),
            &RenderOptions::default(),
        )
}

/// The default limits with time enough for an unoptimised build to reach the memory
/// budget (a release build takes well under a second for every case).
const PATIENT: RenderLimits = RenderLimits {
    timeout: Duration::from_secs(20),
    fuel: llmjp_chat::DEFAULT_FUEL,
    max_output_bytes: llmjp_chat::DEFAULT_MAX_OUTPUT_BYTES,
    max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
};

fn assert_stops(cases: &[(&str, &str)], expected: fn(&ChatError) -> bool) {
    for (name, source) in cases {
        let start = Instant::now();
        let result = render(source);
        let elapsed = start.elapsed();
        eprintln!("{name}: {elapsed:?}");
        match result {
            Err(e) if expected(&e) => {}
            other => panic!("{name}: expected a limit error, got {other:?}"),
        }
        assert!(
            elapsed < Duration::from_secs(10),
            "{name}: took {elapsed:?}"
        );
    }
}

#[test]
fn growing_values_hit_the_memory_budget() {
    assert_stops(MEMORY, |e| matches!(e, ChatError::MemoryLimit { .. }));
}

#[test]
fn slow_loops_hit_the_time_budget() {
    assert_stops(TIME, |e| {
        matches!(e, ChatError::Timeout { .. } | ChatError::OutOfFuel { .. })
    });
}

#[test]
fn deep_nesting_is_refused_before_it_can_overflow_the_stack() {
    let source = "{% set ns = namespace(l=none) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}";
    let err = render(source).unwrap_err();
    let ChatError::Render { message } = &err else {
        panic!("unexpected {err:?}");
    };
    assert!(message.contains("nest deeper"), "{message}");
}

#[test]
fn limits_are_configurable_and_reported() {
    let limits = RenderLimits {
        max_memory_bytes: 1000,
        timeout: Duration::from_millis(50),
        ..RenderLimits::default()
    };
    let template = |source: &str| {
        ChatTemplate::new(source, BTreeMap::new())
            .unwrap()
            .with_limits(limits)
    };
    let one = json!([{"role": "user", "content": "hi"}]);
    let err = template("{{ 'x' * 2000 }}")
        .render_json(&one, &RenderOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, ChatError::MemoryLimit { limit: 1000 }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "chat template needs more than its memory budget of 1000 bytes"
    );
    let slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    let err = template(slow)
        .with_fuel(u64::MAX / 4)
        .render_json(&one, &RenderOptions::default())
        .unwrap_err();
    assert!(matches!(err, ChatError::Timeout { .. }), "{err:?}");
    // What fits still renders.
    let ok = template("{{ 'x' * 100 }}")
        .render_json(&one, &RenderOptions::default())
        .unwrap();
    assert_eq!(ok.len(), 100);
}

#[test]
fn hardened_operators_keep_their_meaning() {
    let cases = [
        ("{{ 1 + 2 }}", "3"),
        ("{{ 1.5 + 2 }}", "3.5"),
        ("{{ 2.0 + 1 }}{{ true + 1 }}", "3.02"),
        ("{{ 'a' + 'b' }}", "ab"),
        ("{{ [1] + [2, 3] }}", "[1, 2, 3]"),
        ("{{ 'ab' * 3 }}", "ababab"),
        ("{{ 3 * 'ab' }}", "ababab"),
        ("{{ [1, 2] * 2 }}", "[1, 2, 1, 2]"),
        ("{{ 2 * 3.5 }}", "7.0"),
        (
            "{{ -1 }}{{ -1.5 }}{{ - 2 }}{{ 1e20 }}",
            "-1-1.5-2100000000000000000000.0",
        ),
        (
            "{{ [1, 2, 3][-1] }}{{ 'abc'[1:] }}{{ 7 // 2 }}{{ 2 ** 3 }}",
            "3bc38",
        ),
        ("{{ messages.0.content }}{{ 4 is divisibleby 2 }}", "hiTrue"),
        ("{{ 1 ~ none ~ 'x' }}", "1Nonex"),
        ("{{ 'a\nb' | indent(2, true) }}", "  a\n  b"),
        ("{{ 'aXbX' | replace('X', '-') }}", "a-b-"),
        ("{{ 'aXbX'.replace('X', '-', 1) }}", "a-bX"),
        ("{{ [1, 2] | join('+') }}", "1+2"),
        ("{{ '+'.join(['a', 'b']) }}", "a+b"),
        ("{{ '%s=%03d' | format('x', 7) }}", "x=007"),
        ("{{ '{}-{}'.format(1, 2) }}", "1-2"),
        ("{{ [1, 2, 3] | batch(2, 0) | list }}", "[[1, 2], [3, 0]]"),
        ("{{ [1, 2] | string }}", "[1, 2]"),
        ("{{ 'ab' | list }}", "[\"a\", \"b\"]"),
        ("{{ (9223372036854775807 + 1) > 0 }}", "True"),
        (
            "{% set x %}a{{ 1 }}b{% endset %}{{ x }}{% for i in range(3) %}{{ i }}{% endfor %}",
            "a1b012",
        ),
        (
            "{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(1) }}{{ m('y') }}",
            "<1><y>",
        ),
        (
            "{% for x in [1, [2, [3]], 4] recursive %}{% if x is sequence %}({{ loop(x) }}){% else %}{{ x }}{% endif %}{% endfor %}",
            "1(2(3))4",
        ),
        (
            "{% set ns = namespace(n=0) %}{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}",
            "3",
        ),
    ];
    for (source, expected) in cases {
        assert_eq!(render(source).unwrap(), expected, "{source}");
    }
}

/// What a hostile case must end with.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// [`ChatError::MemoryLimit`].
    Memory,
    /// [`ChatError::Raised`] with a message cut to [`MAX_MESSAGE_BYTES`].
    RaisedAndCut,
    /// [`ChatError::Render`] (values nested too deeply, unknown filters).
    Render,
}

/// Templates whose built-ins make far more than their inputs (the "one request kills the
/// server" audit): each must stop at the budget, before allocating it.
const MADE: &[(&str, &str, Expect)] = &[
    (
        "map(upper) over a list of large strings (30 GB unbounded)",
        "{{ (['x' * 30000000] * 1000) | map('upper') | list | length }}",
        Expect::Memory,
    ),
    (
        "map(lower) over a list of large strings",
        "{{ (['X' * 30000000] * 1000) | map('lower') | length }}",
        Expect::Memory,
    ),
    ("map(title)", "{{ (['x' * 10000000] * 1000) | map('title') | length }}", Expect::Memory),
    (
        "map(capitalize)",
        "{{ (['x' * 10000000] * 1000) | map('capitalize') | length }}",
        Expect::Memory,
    ),
    ("map(trim)", "{{ ([' x ' * 10000000] * 1000) | map('trim') | length }}", Expect::Memory),
    (
        "map(replace) with a longer replacement",
        "{{ (['x' * 1000000] * 1000) | map('replace', 'x', 'yy') | length }}",
        Expect::Memory,
    ),
    ("map(escape)", "{{ (['<' * 10000000] * 1000) | map('escape') | length }}", Expect::Memory),
    ("map(tojson)", "{{ (['x' * 10000000] * 1000) | map('tojson') | length }}", Expect::Memory),
    ("map(list) of characters", "{{ (['x' * 1000000] * 1000) | map('list') | length }}", Expect::Memory),
    ("map(split)", "{{ (['x' * 1000000] * 1000) | map('split', 'x') | length }}", Expect::Memory),
    ("map(lines)", "{{ (['x\\n' * 1000000] * 1000) | map('lines') | length }}", Expect::Memory),
    ("map(indent)", "{{ (['x\\n' * 1000000] * 1000) | map('indent', 100) | length }}", Expect::Memory),
    ("map(string) of lists", "{{ ([['x' * 1000000] * 100] * 1000) | map('string') | length }}", Expect::Memory),
    ("map(reverse)", "{{ (['xy' * 10000000] * 1000) | map('reverse') | length }}", Expect::Memory),
    (
        "map(format) with a wide field",
        "{{ (['%99999999s'] * 1000) | map('format', 'x') | length }}",
        Expect::Memory,
    ),
    (
        "select with a test that prints lists",
        "{{ ([['x' * 1000000] * 1000] * 1000) | select('startingwith', 'y') | list | length }}",
        Expect::Memory,
    ),
    (
        "the in operator printing a list",
        "{{ (['x' * 1000000] * 1000) in 'y' }}",
        Expect::Memory,
    ),
    (
        "the in test printing a list",
        "{{ (['x' * 1000000] * 1000) is in 'y' }}",
        Expect::Memory,
    ),
    ("strftime_now with a long format", "{{ strftime_now('%c' * 10000000) }}", Expect::Memory),
    ("split into many pieces", "{{ ('x' * 20000000) | split('x') | length }}", Expect::Memory),
    ("split on the empty string", "{{ ('x' * 20000000).split('') | length }}", Expect::Memory),
    ("lines of many short lines", "{{ ('x\\n' * 10000000) | lines | length }}", Expect::Memory),
    ("splitlines method", "{{ ('x\\n' * 10000000).splitlines() | length }}", Expect::Memory),
    ("escape of markup", "{{ ('<' * 30000000) | escape | length }}", Expect::Memory),
    ("tojson of quotes", "{{ ('\"' * 40000000) | tojson | length }}", Expect::Memory),
    (
        "tojson with a huge indent",
        "{{ [[[[1]]]] | tojson(indent='x' * 30000000) | length }}",
        Expect::Memory,
    ),
    (
        "string methods inside a loop, kept",
        "{% set ns = namespace(l=[]) %}{% for s in ['x' * 10000000] * 100 %}{% set ns.l = ns.l + [s.upper()] %}{% endfor %}",
        Expect::Memory,
    ),
    ("str.split", "{{ ('x ' * 10000000).split() | length }}", Expect::Memory),
    ("str.join", "{{ '-'.join(['x' * 1000000] * 1000) | length }}", Expect::Memory),
    ("str.format", "{{ '{}{}{}{}'.format(*(['x' * 20000000] * 4)) | length }}", Expect::Memory),
    ("str.title", "{{ (('x' * 40000000).title() ~ ('y' * 30000000)) | length }}", Expect::Memory),
    ("slice into a huge number of lists", "{{ [1] | slice(999999999999) | length }}", Expect::Memory),
    ("sort of many items", "{% set l = [1] * 1500000 %}{{ l | sort | length }}", Expect::Memory),
    ("groupby of many items", "{{ ([{'a': 1}] * 1000000) | groupby('a') | length }}", Expect::Memory),
    ("unique of distinct large strings", "{{ (range(100) | map('string') | map('replace', '', 'x' * 1000000)) | unique | length }}", Expect::Memory),
    (
        "dictsort values printed",
        "{{ ({'a': ['x' * 1000000] * 1000} | dictsort | map('string') | list) | length }}",
        Expect::Memory,
    ),
    ("batch", "{{ ([1] * 1000000) | batch(1) | list | length }}", Expect::Memory),
    (
        "chain grown in a loop",
        "{% set ns = namespace(l=[1] * 100000) %}{% for i in range(100000) %}{% set ns.l = ns.l | chain([i]) %}{% endfor %}",
        Expect::Memory,
    ),
    (
        "zip grown in a loop",
        "{% set ns = namespace(l=[1] * 100000) %}{% for i in range(100000) %}{% set ns.l = ns.l | zip(ns.l) %}{% endfor %}",
        Expect::Memory,
    ),
    (
        "dict.values() nested in a loop",
        "{% set ns = namespace(v=none) %}{% for i in range(100000) %}{% set ns.v = {'a': ns.v}.values() %}{% endfor %}",
        Expect::Render,
    ),
    (
        "reverse nested in a loop",
        "{% set ns = namespace(v=[1]) %}{% for i in range(100000) %}{% set ns.v = [ns.v] | reverse %}{% endfor %}",
        Expect::Render,
    ),
    ("debug of a large state", "{% set l = ['x' * 1000000] * 1000 %}{{ debug() | length }}", Expect::Memory),
    ("pprint of shared large strings", "{{ (['x' * 1000000] * 1000) | pprint | length }}", Expect::Memory),
    ("raise_exception with a 60 MB message", "{{ raise_exception('x' * 60000000) }}", Expect::RaisedAndCut),
    (
        "raise_exception with a list of large strings",
        "{{ raise_exception(['x' * 1000000] * 1000) }}",
        Expect::RaisedAndCut,
    ),
    (
        "repeating an empty lazy sequence many times",
        "{% for x in range(0) * 999999999999 %}{% endfor %}{{ ([] * 999999999999) ~ ('x' * 99999999) }}",
        Expect::Memory,
    ),
    ("wordwrap does not exist", "{{ 'x' | wordwrap(99999999999) }}", Expect::Render),
    ("center does not exist", "{{ 'x'.center(99999999999) }}", Expect::Render),
];

/// Renders each case in this process, checking its outcome, time and peak heap.
fn assert_made_cases_stop() {
    for (name, source, expect) in MADE {
        let start = Instant::now();
        let (result, peak) = peak_heap(|| render_with(source, PATIENT));
        let elapsed = start.elapsed();
        eprintln!("{name}: {elapsed:?}, peak heap {} MiB", peak >> 20);
        match (expect, &result) {
            (Expect::Memory, Err(ChatError::MemoryLimit { .. })) => {}
            (Expect::RaisedAndCut, Err(ChatError::Raised { message })) => {
                assert!(
                    message.len() <= MAX_MESSAGE_BYTES,
                    "{name}: {}",
                    message.len()
                );
            }
            (Expect::Render, Err(ChatError::Render { message })) => {
                assert!(
                    message.len() <= MAX_MESSAGE_BYTES,
                    "{name}: {}",
                    message.len()
                );
            }
            _ => panic!("{name}: expected {expect:?}, got {result:?}"),
        }
        assert!(elapsed < PATIENT.timeout, "{name}: took {elapsed:?}");
        assert!(
            peak <= peak_allowed(DEFAULT_MAX_MEMORY_BYTES),
            "{name}: peak heap {peak} bytes"
        );
    }
}

#[test]
fn built_ins_are_charged_for_what_they_make_under_2_gib() {
    run_in_child("child_built_ins_are_charged_for_what_they_make");
}

/// The child half of `built_ins_are_charged_for_what_they_make_under_2_gib` (a no-op
/// unless started by it).
#[test]
fn child_built_ins_are_charged_for_what_they_make() {
    if is_child() {
        assert_made_cases_stop();
        // The earlier corpus too, now with its peak heap measured.
        for (name, source) in MEMORY {
            let (result, peak) = peak_heap(|| render_with(source, PATIENT));
            assert!(
                matches!(result, Err(ChatError::MemoryLimit { .. })),
                "{name}: {result:?}"
            );
            assert!(
                peak <= peak_allowed(DEFAULT_MAX_MEMORY_BYTES),
                "{name}: peak heap {peak} bytes"
            );
        }
    }
}

#[test]
fn template_error_messages_are_truncated() {
    let long_name = "f".repeat(100_000);
    let cases = [
        "{{ raise_exception('é' * 1000000) }}".to_string(),
        format!("{{{{ 1 | {long_name} }}}}"),
        format!("{{{{ {long_name}.{long_name}() }}}}"),
        format!("{{{{ '{long_name}' | int + {long_name} }}}}"),
    ];
    for source in &cases {
        let err = render(source).unwrap_err();
        let message = match &err {
            ChatError::Raised { message }
            | ChatError::Render { message }
            | ChatError::Syntax { message } => message,
            other => panic!("{other:?}"),
        };
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
        assert!(err.to_string().len() <= MAX_MESSAGE_BYTES + 64);
    }
    // Short messages are kept whole.
    let err = render("{{ raise_exception('No system message allowed') }}").unwrap_err();
    assert_eq!(
        err.to_string(),
        "chat template raised an exception: No system message allowed"
    );
}

#[test]
fn wrapped_built_ins_keep_their_meaning() {
    let cases = [
        ("{{ ['a', 'b'] | map('upper') | join(',') }}", "A,B"),
        ("{{ [1, 2, 3, 4] | select('odd') | list }}", "[1, 3]"),
        ("{{ [1, 2, 3, 4] | reject('odd') | list }}", "[2, 4]"),
        (
            "{{ [{'a': 1}, {'a': 2}] | selectattr('a', 'eq', 2) | map(attribute='a') | list }}",
            "[2]",
        ),
        ("{{ [{'a': 1}, {'a': 2}] | rejectattr('a', 'eq', 2) | list | length }}", "1"),
        (
            "{% for g in [{'a': 1}, {'a': 2}, {'a': 1}] | groupby('a') %}{{ g.grouper }}:{{ g.list | length }} {% endfor %}",
            "1:2 2:1 ",
        ),
        ("{{ ['b', 'A', 'a', 'B'] | unique | list }}", "[\"b\", \"A\"]"),
        ("{{ [3, 1, 2] | sort(reverse=true) }}", "[3, 2, 1]"),
        ("{{ {'b': 1, 'a': 2} | dictsort }}", "[[\"a\", 2], [\"b\", 1]]"),
        ("{% for k, v in {'a': 1} | items %}{{ k }}={{ v }}{% endfor %}", "a=1"),
        ("{{ [1, 2] | reverse | list }}{{ 'abc' | reverse }}", "[2, 1]cba"),
        ("{{ [1] | chain([2], [3]) | list }}", "[1, 2, 3]"),
        ("{{ [1, 2] | zip(['a', 'b']) | list }}", "[[1, \"a\"], [2, \"b\"]]"),
        ("{{ [1, 2, 3] | slice(2) | list }}", "[[1, 2], [3]]"),
        ("{{ '<a & \"b\">' | escape }}", "&lt;a &amp; &quot;b&quot;&gt;"),
        ("{{ {'a': [1]} | tojson(indent=1) }}", "{\n \"a\": [\n  1\n ]\n}"),
        ("{{ 'a,b' | split(',') }}{{ 'a\\nb' | lines }}", "[\"a\", \"b\"][\"a\", \"b\"]"),
        ("{{ 'hello world' | title }} {{ 'hELLO' | capitalize }}", "Hello World Hello"),
        ("{{ '  x ' | trim }}|{{ 'xxaxx' | trim('x') }}", "x|a"),
        ("{{ [1, 2] | first }}{{ [1, 2] | last }}{{ [3, 1] | min }}{{ [3, 1] | max }}", "1213"),
        ("{{ [1, 2] | sum }}{{ missing | default('d') }}{{ 'abc' | length }}", "3d3"),
        ("{{ '3' | int + 1 }} {{ '1.5' | float }} {{ 2.567 | round(1) }} {{ -2 | abs }}", "4 1.5 2.6 2"),
        ("{{ 'ab' | list }}{{ 1 | string }}{{ 'x' | safe }}", "[\"a\", \"b\"]1x"),
        ("{{ 'x' in 'xy' }}{{ 1 in [1, 2] }}{{ 'a' in {'a': 1} }}{{ 3 in [1] }}", "TrueTrueTrueFalse"),
        (
            "{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 'a' == 'a' != 'b' }}{{ 1 in [1] in [[1]] }}{{ 0 < (1 < 2 < 3) + 1 < 3 }}{{ 2 not in [1] not in [[2]] }}",
            "TrueFalseTrueTrueTrueTrue",
        ),
        ("{{ 1 in 'a1' }}{{ 'b' not in 'abc' }}{{ 'x' in missing }}", "TrueFalseFalse"),
        ("{{ {'a': 1}.items() | list }}{{ {'a': 1}.keys() | list }}{{ {'a': 1}.values() | list }}", "[[\"a\", 1]][\"a\"][1]"),
        ("{{ {'a': 1}.get('b', 2) }}{{ [1, 1].count(1) }}", "22"),
        ("{{ 'a b'.split() }}{{ 'a\\nb'.splitlines() }}{{ 'aXb'.split('X', 1) }}", "[\"a\", \"b\"][\"a\", \"b\"][\"a\", \"b\"]"),
        ("{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}{{ ' x '.strip() }}{{ 'ab'.startswith('a') }}", "ABabxTrue"),
        ("{{ 'xyz' is startingwith 'x' }}{{ 'x' is in 'xy' }}{{ 'ab' is lower }}", "TrueTrueTrue"),
        ("{{ range(3) | list }}{{ dict(a=1) }}{% set ns = namespace(a=1) %}{{ ns.a }}", "[0, 1, 2]{\"a\": 1}1"),
        ("{{ 'a' | indent(2, true) }}{{ '%s-%s' | format(1, 2) }}", "  a1-2"),
        ("{{ ['a', 'b'] | batch(1) | list }}", "[[\"a\"], [\"b\"]]"),
        ("{{ messages | map(attribute='role') | join }}", "user"),
    ];
    for (source, expected) in cases {
        assert_eq!(render(source).unwrap(), expected, "{source}");
    }
    let year = render("{{ strftime_now('%Y') }}").unwrap();
    assert_eq!(year.len(), 4, "{year}");
}

/// Expression fragments for the fuzzer: `{s}` a string expression, `{l}` a list, `{n}` a
/// number (some huge).
fn string_expression() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just("'x'".to_string()),
        Just("'ab\\n<&>é'".to_string()),
        Just("messages[0].content".to_string()),
        Just("ns.s".to_string()),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        let list = list_expression(inner.clone().boxed());
        prop_oneof![
            (inner.clone(), number()).prop_map(|(s, n)| format!("({s} * {n})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} ~ {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} + {b})")),
            (inner.clone(), string_filter()).prop_map(|(s, f)| format!("({s} | {f})")),
            (inner.clone(), string_method()).prop_map(|(s, m)| format!("({s}.{m})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} | replace('x', {b}))")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}.replace('', {b}))")),
            (list.clone(), inner.clone()).prop_map(|(l, s)| format!("({l} | join({s}))")),
            (inner.clone(), list.clone()).prop_map(|(s, l)| format!("({s}.join({l}))")),
            (list.clone(), string_filter()).prop_map(|(l, f)| format!("({l} | {f})")),
            (inner.clone(), number()).prop_map(|(s, n)| format!("({s} | indent({n}))")),
            number().prop_map(|n| format!("('%{n}s' | format('x'))")),
            inner.clone().prop_map(|s| format!("strftime_now({s})")),
            list.clone().prop_map(|l| format!("({l} | pprint)")),
            (inner.clone(), list.clone()).prop_map(|(s, l)| format!(
                "(({s} in {l}) ~ ({l} in {s}) ~ ({l} == {l}) ~ ({l} < {l}))"
            )),
            (list.clone(), inner.clone())
                .prop_map(|(l, s)| format!("({l} | select('in', {s}) | join)")),
            list.prop_map(|l| format!("raise_exception({l})")),
        ]
    })
    .boxed()
}

fn list_expression(string: BoxedStrategy<String>) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        string.clone().prop_map(|s| format!("[{s}]")),
        count().prop_map(|n| format!("range({n})")),
        Just("messages".to_string()),
        Just("ns.l".to_string()),
    ];
    leaf.prop_recursive(2, 8, 2, move |inner| {
        prop_oneof![
            (inner.clone(), number()).prop_map(|(l, n)| format!("({l} * {n})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} + {b})")),
            (inner.clone(), string_filter())
                .prop_map(|(l, f)| format!("({l} | map('{}'))", f.split('(').next().unwrap())),
            (inner.clone(), list_filter()).prop_map(|(l, f)| format!("({l} | {f})")),
            string.clone().prop_map(|s| format!("({s} | split('x'))")),
            string.clone().prop_map(|s| format!("({s}.split())")),
            string.clone().prop_map(|s| format!("({s} | lines)")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} | zip({b}) | list)")),
        ]
    })
    .boxed()
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..8).prop_map(|n| n.to_string()),
        Just("1000".to_string()),
        Just("100000".to_string()),
        Just("10000000".to_string()),
        Just("999999999999".to_string()),
    ]
}

/// Loop counts (`range` refuses more than 100,000).
fn count() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..8).prop_map(|n| n.to_string()),
        Just("1000".to_string()),
        Just("100000".to_string()),
    ]
}

fn string_filter() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("upper"),
        Just("lower"),
        Just("title"),
        Just("capitalize"),
        Just("trim"),
        Just("escape"),
        Just("tojson"),
        Just("string"),
        Just("reverse"),
        Just("list"),
        Just("length"),
        Just("first"),
        Just("safe"),
        Just("pprint"),
        Just("tojson(indent=4)"),
        Just("center(9)"),
    ]
    .prop_map(String::from)
}

fn string_method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("upper()"),
        Just("lower()"),
        Just("title()"),
        Just("capitalize()"),
        Just("strip()"),
        Just("replace('x', 'xx')"),
        Just("split('x')"),
        Just("splitlines()"),
        Just("format(1, 2)"),
        Just("count('x')"),
    ]
    .prop_map(String::from)
}

fn list_filter() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("list"),
        Just("sort"),
        Just("unique"),
        Just("reverse"),
        Just("select"),
        Just("reject('none')"),
        Just("batch(3, 'x')"),
        Just("slice(4)"),
        Just("chain([1])"),
        Just("groupby('x')"),
        Just("dictsort"),
        Just("items"),
        Just("map('string')"),
        Just("select('startingwith', 'x')"),
        Just("tojson"),
        Just("join('-')"),
    ]
    .prop_map(String::from)
}

/// A template of a few statements built from the fragments: prints, namespace updates
/// and loops that grow a value.
fn template() -> impl Strategy<Value = String> {
    let statement = prop_oneof![
        string_expression().prop_map(|s| format!("{{{{ {s} }}}}")),
        string_expression().prop_map(|s| format!("{{% set ns.s = {s} %}}")),
        list_expression(string_expression()).prop_map(|l| format!("{{% set ns.l = {l} %}}")),
        (count(), string_expression()).prop_map(|(n, s)| format!(
            "{{% for i in range({n}) %}}{{% set ns.s = ns.s ~ {s} %}}{{% endfor %}}"
        )),
        (count(), list_expression(string_expression())).prop_map(|(n, l)| format!(
            "{{% for i in range({n}) %}}{{% set ns.l = ns.l + {l} %}}{{% endfor %}}"
        )),
        list_expression(string_expression())
            .prop_map(|l| format!("{{% for x in {l} %}}{{{{ x }}}}{{% endfor %}}")),
    ];
    prop::collection::vec(statement, 1..4).prop_map(|statements| {
        format!(
            "{{% set ns = namespace(s='x', l=['x']) %}}{}",
            statements.concat()
        )
    })
}

/// The limits the fuzzer renders under: small, so that limits are reached fast.
const FUZZ_LIMITS: RenderLimits = RenderLimits {
    fuel: 200_000,
    max_output_bytes: 1 << 20,
    max_memory_bytes: 4 << 20,
    timeout: Duration::from_millis(300),
};

#[test]
fn fuzzed_templates_stay_within_their_limits_under_2_gib() {
    run_in_child("child_fuzzed_templates_stay_within_their_limits");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    /// The child half of `fuzzed_templates_stay_within_their_limits_under_2_gib` (a no-op
    /// unless started by it): every render ends `Ok` within the output limit or with a
    /// typed error, quickly and within the heap bound of its budget.
    #[test]
    fn child_fuzzed_templates_stay_within_their_limits(source in template()) {
        if is_child() {
            // A template that hangs gets the child killed before proptest can report it:
            // `LLMJP_CHAT_FUZZ_TRACE=file` keeps the one being rendered in `file`.
            if let Some(path) = std::env::var_os("LLMJP_CHAT_FUZZ_TRACE") {
                std::fs::write(path, &source).unwrap();
            }
            let start = Instant::now();
            let (result, peak) = peak_heap(|| {
                ChatTemplate::new(&source, BTreeMap::new()).map(|t| t.with_limits(FUZZ_LIMITS))
                    .and_then(|t| t.render_json(
                        &json!([{"role": "user", "content": "hi"}]),
                        &RenderOptions::default(),
                    ))
            });
            let elapsed = start.elapsed();
            match &result {
                Ok(text) => prop_assert!(text.len() <= FUZZ_LIMITS.max_output_bytes),
                Err(ChatError::Raised { message } | ChatError::Render { message } | ChatError::Syntax { message }) => {
                    prop_assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len())
                }
                Err(ChatError::MemoryLimit { .. } | ChatError::Timeout { .. } | ChatError::OutOfFuel { .. } | ChatError::OutputTooLarge { .. }) => {}
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
            prop_assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}: {source}");
            prop_assert!(
                peak <= peak_allowed(FUZZ_LIMITS.max_memory_bytes),
                "peak heap {peak} bytes: {source}"
            );
        }
    }
}
