//! Templates written to exhaust memory or time: every one ends with a typed error, quickly,
//! under the default limits (the CLI corpus runs the same classes under an address-space
//! limit, see `llmjp-cli/tests/hostile.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use llmjp_chat::{ChatError, ChatTemplate, RenderLimits, RenderOptions};
use serde_json::json;

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
        "comparing big strings in a loop",
        "{% set a = 'x' * 10000000 %}{% set b = 'x' * 10000000 %}{% for i in range(100000) %}{% if a == b %}{% endif %}{% endfor %}",
    ),
    (
        "searching big strings in a loop",
        "{% set a = 'x' * 10000000 %}{% for i in range(100000) %}{% if 'y' in a %}{% endif %}{% endfor %}",
    ),
];

fn render(source: &str) -> Result<String, ChatError> {
    ChatTemplate::new(source, BTreeMap::new())?.render_json(
        &json!([{"role": "user", "content": "hi"}]),
        &RenderOptions::default(),
    )
}

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
