//! GGUF headers: every value type and the tensor directory read back; truncated, corrupt and
//! hostile files are `InvalidGguf` errors, never panics or huge allocations.

use llmjp_testdata::gguf::{string, Writer};
use llmjp_testdata::limits::{is_test_child, run_test_in_child};
use llmjp_weights::gguf::{
    GgmlType, Gguf, GgufFile, GgufValue, MAX_ARRAY_ITEMS, MAX_METADATA_ENTRIES,
    MAX_METADATA_VALUES, MAX_STRING_BYTES, MAX_TENSORS, MAX_TENSOR_NAME_BYTES,
};
use llmjp_weights::WeightsError;
use proptest::prelude::*;

mod gguf_support;

fn sample() -> Vec<u8> {
    let mut w = Writer::default();
    let mut tokens = 8u32.to_le_bytes().to_vec(); // array of strings
    tokens.extend(3u64.to_le_bytes());
    for t in ["<unk>", "<s>", "日本"] {
        tokens.extend(string(t));
    }
    let mut scores = 6u32.to_le_bytes().to_vec(); // array of f32
    scores.extend(2u64.to_le_bytes());
    scores.extend(0.5f32.to_le_bytes());
    scores.extend((-1.5f32).to_le_bytes());
    w.meta("general.architecture", 8, &string("llama"))
        .meta("u8", 0, &[7])
        .meta("i8", 1, &[0xff])
        .meta("u16", 2, &513u16.to_le_bytes())
        .meta("i16", 3, &(-2i16).to_le_bytes())
        .meta("llama.block_count", 4, &24u32.to_le_bytes())
        .meta("i32", 5, &(-3i32).to_le_bytes())
        .meta("llama.rope.freq_base", 6, &10000f32.to_le_bytes())
        .meta("bool", 7, &[1])
        .meta("tokenizer.ggml.tokens", 9, &tokens)
        .meta("scores", 9, &scores)
        .meta("u64", 10, &(1u64 << 40).to_le_bytes())
        .meta("i64", 11, &(-4i64).to_le_bytes())
        .meta("f64", 12, &0.25f64.to_le_bytes());
    let f32s: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    w.tensor("output_norm.weight", &[6], 0, &f32s);
    // Two rows of one Q8_0 block each: [in 32, out 2].
    w.tensor("output.weight", &[32, 2], 8, &[3u8; 68]);
    w.tensor("blk.0.ffn_down.weight", &[256, 1], 10, &[]); // a type not read: Q2_K
    w.bytes()
}

fn parse(bytes: &[u8]) -> Result<Gguf, WeightsError> {
    Gguf::parse(bytes, "test.gguf".as_ref())
}

fn invalid(bytes: &[u8], needle: &str) {
    match parse(bytes) {
        Err(WeightsError::InvalidGguf { message, .. }) => {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}")
        }
        other => panic!("expected an invalid-GGUF error with {needle:?}, got {other:?}"),
    }
}

#[test]
fn reads_every_value_type_and_the_tensor_directory() {
    let bytes = sample();
    let gguf = parse(&bytes).unwrap();
    assert_eq!(gguf.version, 3);
    assert_eq!(
        gguf.get("general.architecture").unwrap().as_str(),
        Some("llama")
    );
    assert_eq!(gguf.get("u8"), Some(&GgufValue::U8(7)));
    assert_eq!(gguf.get("i8"), Some(&GgufValue::I8(-1)));
    assert_eq!(gguf.get("u16"), Some(&GgufValue::U16(513)));
    assert_eq!(gguf.get("i16"), Some(&GgufValue::I16(-2)));
    assert_eq!(gguf.get("llama.block_count").unwrap().as_u64(), Some(24));
    assert_eq!(gguf.get("i32").unwrap().as_u64(), None);
    assert_eq!(
        gguf.get("llama.rope.freq_base").unwrap().as_f64(),
        Some(10000.0)
    );
    assert_eq!(gguf.get("bool"), Some(&GgufValue::Bool(true)));
    let tokens = GgufValue::Array(
        ["<unk>", "<s>", "日本"]
            .map(|t| GgufValue::String(t.into()))
            .to_vec(),
    );
    assert_eq!(gguf.get("tokenizer.ggml.tokens"), Some(&tokens));
    assert_eq!(
        gguf.get("scores"),
        Some(&GgufValue::Array(vec![
            GgufValue::F32(0.5),
            GgufValue::F32(-1.5)
        ]))
    );
    assert_eq!(gguf.get("u64").unwrap().as_u64(), Some(1 << 40));
    assert_eq!(gguf.get("i64"), Some(&GgufValue::I64(-4)));
    assert_eq!(gguf.get("f64").unwrap().as_f64(), Some(0.25));

    let norm = gguf.tensor("output_norm.weight").unwrap();
    assert_eq!(
        (norm.shape(), norm.kind, norm.len),
        (vec![6], GgmlType::F32, 24)
    );
    assert_eq!(&gguf.data(&bytes, norm)[4..8], &2f32.to_le_bytes());
    let head = gguf.tensor("output.weight").unwrap();
    assert_eq!(
        (head.shape(), head.kind, head.len),
        (vec![2, 32], GgmlType::Q8_0, 68)
    );
    assert_eq!(head.start % 32, 0);
    let kquant = gguf.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!((kquant.kind, kquant.len), (GgmlType::Other(10), 0));
    assert_eq!(kquant.kind.to_string(), "GGML type 10");

    // The same from a file, mapped.
    let path = std::env::temp_dir().join(format!("llmjp-gguf-{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(
        file.data(file.header().tensor("output.weight").unwrap()),
        &[3u8; 68]
    );
    drop(file);
    std::fs::remove_file(&path).unwrap();
    let dir = std::env::temp_dir();
    assert!(matches!(
        GgufFile::open(&dir),
        Err(WeightsError::NotAFile { .. })
    ));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample();
    for end in 0..bytes.len() {
        match parse(&bytes[..end]) {
            Err(WeightsError::InvalidGguf { .. }) => {}
            other => panic!("{end} bytes of {}: {other:?}", bytes.len()),
        }
    }
}

#[test]
fn hostile_headers_are_refused_without_allocating() {
    invalid(b"GGML\x03\0\0\0", "no GGUF magic");
    invalid(&header(1, 0, 0), "version 1");
    invalid(&header(3, u64::MAX, 0), "more than the limit");
    invalid(&header(3, 0, 1 << 60), "more than the limit");
    invalid(&header(3, 1000, 0), "1000 tensors cannot fit");
    invalid(&header(3, 0, 1000), "1000 metadata entries cannot fit");
    // A string claiming 2^62 bytes.
    let mut b = header(3, 0, 1);
    b.extend((1u64 << 62).to_le_bytes());
    b.extend([0; 16]);
    invalid(&b, "bytes in a metadata key");
    // One of 1000 bytes in a file of fewer.
    let mut b = header(3, 0, 1);
    b.extend(1000u64.to_le_bytes());
    b.extend([0; 16]);
    invalid(&b, "cannot fit");
    // An array claiming 2^40 items, an unknown value type, a bad boolean, deep nesting.
    let mut b = header(3, 0, 1);
    b.extend(string("a"));
    b.extend(9u32.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend((1u64 << 40).to_le_bytes());
    invalid(&b, "array items (more than the limit");
    let mut b = header(3, 0, 1);
    b.extend(string("a"));
    b.extend(9u32.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(1000u64.to_le_bytes());
    invalid(&b, "1000 array items cannot fit");
    let mut w = Writer::default();
    w.meta("a", 13, &[0; 8]);
    invalid(&w.bytes(), "unknown metadata type 13");
    let mut w = Writer::default();
    w.meta("a", 7, &[2]);
    invalid(&w.bytes(), "boolean");
    let mut nested = Vec::new();
    for _ in 0..6 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    nested.extend(0u32.to_le_bytes());
    nested.push(0);
    let mut w = Writer::default();
    w.meta("a", 9, &nested);
    invalid(&w.bytes(), "nested too deep");
    // Too many values in all, each cheap in the file: arrays of u8 of the most items each.
    let mut w = Writer::default();
    let arrays = MAX_METADATA_VALUES / MAX_ARRAY_ITEMS + 1;
    for i in 0..arrays {
        let mut many = 0u32.to_le_bytes().to_vec();
        many.extend(MAX_ARRAY_ITEMS.to_le_bytes());
        many.resize(many.len() + MAX_ARRAY_ITEMS as usize, 0);
        w.meta(&format!("a{i}"), 9, &many);
    }
    invalid(&w.bytes(), "metadata values");
    // Tensors: dimensions, overflow, blocks, alignment, bounds.
    let tensor = |dims: &[u64], kind: u32, data: usize| {
        let mut w = Writer::default();
        w.tensor("t", dims, kind, &vec![0; data]);
        w.bytes()
    };
    invalid(&tensor(&[], 0, 0), "0 dimensions");
    invalid(&tensor(&[1, 1, 1, 1, 1], 0, 4), "5 dimensions");
    invalid(&tensor(&[1 << 32, 1 << 32, 1 << 32], 0, 0), "overflows");
    invalid(&tensor(&[16, 2], 8, 68), "whole number of Q8_0 blocks");
    invalid(&tensor(&[32, 2], 8, 67), "past the end");
    let mut w = Writer::default();
    w.meta("general.alignment", 4, &3u32.to_le_bytes());
    invalid(&w.bytes(), "power of two");
    let mut bytes = tensor(&[1], 0, 4);
    // The offset field: after the header (24), the name (8 + 1), n_dims (4), one dim (8)
    // and the type (4).
    let offset_at = 24 + 9 + 4 + 8 + 4;
    bytes[offset_at..offset_at + 8].copy_from_slice(&4u64.to_le_bytes());
    invalid(&bytes, "not aligned");
}

/// A header: magic, version, tensor and metadata counts.
fn header(version: u32, tensors: u64, metadata: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(metadata.to_le_bytes());
    b
}

#[test]
fn counts_and_lengths_are_bounded_by_fixed_limits() {
    // Each count or length is refused on its own, however large the file: no bytes follow.
    invalid(&header(3, MAX_TENSORS + 1, 0), "limit of 65536");
    invalid(&header(3, 0, MAX_METADATA_ENTRIES + 1), "limit of 65536");
    let mut b = header(3, 0, 1);
    b.extend((MAX_STRING_BYTES + 1).to_le_bytes());
    b.extend([0; 16]);
    invalid(&b, "bytes in a metadata key");
    let mut b = header(3, 0, 1);
    b.extend(string("a"));
    b.extend(8u32.to_le_bytes());
    b.extend((MAX_STRING_BYTES + 1).to_le_bytes());
    invalid(&b, "bytes in a metadata string");
    let mut b = header(3, 0, 1);
    b.extend(string("a"));
    b.extend(9u32.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend((MAX_ARRAY_ITEMS + 1).to_le_bytes());
    invalid(&b, "array items");
    let mut b = header(3, 1, 0);
    b.extend((MAX_TENSOR_NAME_BYTES + 1).to_le_bytes());
    b.extend([0; 32]);
    invalid(&b, "bytes in a tensor name");
    // At the limits, with the bytes there: read.
    let long = "x".repeat(MAX_TENSOR_NAME_BYTES as usize);
    let mut w = Writer::default();
    w.tensor(&long, &[1], 0, &[0; 4]);
    assert_eq!(parse(&w.bytes()).unwrap().tensors[0].name, long);
}

#[test]
fn duplicate_keys_and_tensor_names_are_refused() {
    // llama.cpp refuses a key given twice; the first one winning would load a 1-layer
    // model from a file that also says 2 layers.
    let mut w = Writer::default();
    w.meta("llama.block_count", 4, &1u32.to_le_bytes()).meta(
        "llama.block_count",
        4,
        &2u32.to_le_bytes(),
    );
    invalid(&w.bytes(), "\"llama.block_count\" appears twice");
    let mut w = Writer::default();
    w.tensor("output.weight", &[8], 0, &[0; 32])
        .tensor("output.weight", &[8], 0, &[0; 32]);
    invalid(&w.bytes(), "tensor \"output.weight\" appears twice");
}

#[test]
fn overlapping_tensor_data_is_refused() {
    // "a" takes bytes 0..64 of the data, "b" 64..96; b's offset moved to 32 overlaps a.
    let mut w = Writer::default();
    w.tensor("a", &[16], 0, &[0; 64])
        .tensor("b", &[8], 0, &[0; 32]);
    let mut bytes = w.bytes();
    assert!(parse(&bytes).is_ok());
    // b's offset: after the header (24), a's entry (8 + 1 + 4 + 8 + 4 + 8 = 33), b's name
    // (9), dimension count (4), dimension (8) and type (4).
    let offset_at = 24 + 33 + 9 + 4 + 8 + 4;
    assert_eq!(bytes[offset_at..offset_at + 8], 64u64.to_le_bytes());
    bytes[offset_at..offset_at + 8].copy_from_slice(&32u64.to_le_bytes());
    invalid(&bytes, "\"a\" and \"b\" overlap");
    // The same start: overlap too.
    bytes[offset_at..offset_at + 8].copy_from_slice(&0u64.to_le_bytes());
    invalid(&bytes, "overlap");
    // Empty tensors overlap nothing.
    let mut w = Writer::default();
    w.tensor("a", &[0], 0, &[]).tensor("b", &[0], 0, &[]);
    assert!(parse(&w.bytes()).is_ok());
}

/// Selects the child half of [`sparse_16_gib_files_are_refused_under_an_address_space_limit`]:
/// the folder of the sparse files.
const SPARSE_CHILD: &str = "LLMJP_WEIGHTS_SPARSE_GGUF_DIR";
const SPARSE_LEN: u64 = 16 << 30;

/// A hostile sparse file: the bytes written at some offsets (the rest are holes), and
/// what its error must say.
struct SparseCase {
    name: &'static str,
    writes: Vec<(u64, Vec<u8>)>,
    needle: &'static str,
}

/// Hostile 16 GiB sparse files (a few KiB on disk): each header's counts and lengths fit
/// in the file's length, and each must be refused before anything large is allocated.
fn sparse_cases() -> Vec<SparseCase> {
    let entry = |key: &str, kind: u32, value: &[u8]| {
        [string(key), kind.to_le_bytes().to_vec(), value.to_vec()].concat()
    };
    let at_start = |name, bytes: Vec<Vec<u8>>, needle| SparseCase {
        name,
        writes: vec![(0, bytes.concat())],
        needle,
    };
    let mut cases = vec![
        at_start(
            "metadata-count",
            vec![header(3, 0, 1 << 30)],
            "metadata entries (more than the limit",
        ),
        at_start(
            "tensor-count",
            vec![header(3, 1 << 29, 0)],
            "tensors (more than the limit",
        ),
        at_start(
            "string-length",
            vec![header(3, 0, 1), entry("a", 8, &(15u64 << 30).to_le_bytes())],
            "bytes in a metadata string",
        ),
        at_start(
            "array-count",
            vec![
                header(3, 0, 1),
                entry(
                    "a",
                    9,
                    &[&0u32.to_le_bytes()[..], &(1u64 << 33).to_le_bytes()].concat(),
                ), // u8 items
            ],
            "array items",
        ),
        at_start(
            "name-length",
            vec![header(3, 1, 0), (1u64 << 33).to_le_bytes().to_vec()],
            "bytes in a tensor name",
        ),
    ];
    // 17 metadata strings of 4 MiB each, distinct keys: more than the metadata's 64 MiB.
    let mut writes = vec![(0, header(3, 0, 17))];
    let mut at = 24;
    for i in 0..17 {
        let e = entry(&format!("k{i:02}"), 8, &MAX_STRING_BYTES.to_le_bytes());
        let len = e.len() as u64;
        writes.push((at, e));
        at += len + MAX_STRING_BYTES;
    }
    cases.push(SparseCase {
        name: "metadata-bytes",
        writes,
        needle: "the metadata takes more than",
    });
    cases
}

#[cfg(unix)]
#[test]
fn sparse_16_gib_files_are_refused_under_an_address_space_limit() {
    use std::os::unix::fs::FileExt;
    use std::os::unix::process::ExitStatusExt;

    if let Some(dir) = std::env::var_os(SPARSE_CHILD) {
        // The child: parse each file under the limit; a typed error each, else a panic.
        let dir = std::path::PathBuf::from(dir);
        for SparseCase { name, needle, .. } in sparse_cases() {
            match GgufFile::open(&dir.join(format!("{name}.gguf"))) {
                Err(WeightsError::InvalidGguf { message, .. }) if message.contains(needle) => {
                    println!("{name}: refused: {message}")
                }
                other => panic!("{name}: expected an error with {needle:?}, got {other:?}"),
            }
        }
        return;
    }
    let dir = std::env::temp_dir().join(format!("llmjp-gguf-sparse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for SparseCase { name, writes, .. } in sparse_cases() {
        let file = std::fs::File::create(dir.join(format!("{name}.gguf"))).unwrap();
        file.set_len(SPARSE_LEN).unwrap();
        for (at, bytes) in writes {
            file.write_all_at(&bytes, at).unwrap();
        }
    }
    // The mapping takes the file's length of address space; everything else, 2 GiB at most.
    let limit = SPARSE_LEN + (2 << 30);
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "sparse_16_gib_files_are_refused_under_an_address_space_limit",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SPARSE_CHILD, &dir);
    llmjp_testdata::limits::limit_address_space(&mut command, limit);
    let start = std::time::Instant::now();
    let output = command.output().unwrap();
    let elapsed = start.elapsed();
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.signal(), None, "killed by a signal: {stderr}");
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.matches(": refused: ").count(),
        sparse_cases().len(),
        "{stdout}"
    );
    assert!(elapsed.as_secs() < 30, "took {elapsed:?}");
}

/// Any byte changed anywhere: an error or a header whose tensors lie in the file. Runs in
/// a child process under a 2 GiB address-space limit.
#[test]
fn corrupt_bytes_never_panic() {
    if !is_test_child() {
        run_test_in_child("corrupt_bytes_never_panic", 2 << 30, CHILD_DEADLINE);
        return;
    }
    proptest!(ProptestConfig::with_cases(512), |(at in 0usize..400, value in any::<u8>())| {
        let mut bytes = sample();
        let at = at % bytes.len();
        bytes[at] = value;
        if let Ok(gguf) = parse(&bytes) {
            for t in &gguf.tensors {
                prop_assert!(t.start + t.len <= bytes.len());
            }
        }
    });
}

/// How long a child running a fuzzing test may take.
const CHILD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// A count or length as a hostile header gives it: mostly small, sometimes huge.
fn count() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..5,
        1 => Just(u64::MAX),
        1 => (1u64 << 16)..(1u64 << 24),
        1 => (1u64 << 30)..(1u64 << 36),
        1 => any::<u64>(),
    ]
}

/// One metadata entry: a key of four (so that some repeat), a type (known or not), the
/// length or count the type reads first, and bytes after it.
fn entry() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..4,
        prop_oneof![8 => 0u32..13, 1 => any::<u32>()],
        0u32..14,
        count(),
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(|(key, kind, item, count, tail)| {
            let mut b = string(&format!("k{key}"));
            b.extend(kind.to_le_bytes());
            match kind {
                8 => b.extend(count.to_le_bytes()),
                9 => {
                    b.extend(item.to_le_bytes());
                    b.extend(count.to_le_bytes());
                }
                _ => {}
            }
            b.extend(tail);
            b
        })
}

/// One tensor entry: a name of four, dimensions (count and sizes), a type, an offset.
fn tensor_entry() -> impl Strategy<Value = Vec<u8>> {
    let dim = prop_oneof![4 => 0u64..70, 1 => Just(32u64), 1 => count()];
    let kind = prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(8),
        Just(12),
        Just(30),
        any::<u32>()
    ];
    let offset = prop_oneof![
        Just(0u64),
        (0u64..8).prop_map(|x| 32 * x),
        0u64..100,
        count()
    ];
    (
        0u8..4,
        0u32..6,
        prop::collection::vec(dim, 0..6),
        kind,
        offset,
    )
        .prop_map(|(name, n_dims, dims, kind, offset)| {
            let mut b = string(&format!("t{name}"));
            b.extend(n_dims.to_le_bytes());
            for d in dims.iter().take(n_dims as usize) {
                b.extend(d.to_le_bytes());
            }
            b.extend(kind.to_le_bytes());
            b.extend(offset.to_le_bytes());
            b
        })
}

/// A whole hostile file: its header's counts true or not, its data, and the length it is
/// stretched to (sparse) if any.
#[allow(clippy::type_complexity)]
fn hostile_file() -> impl Strategy<Value = (Vec<u8>, Option<u64>)> {
    (
        prop_oneof![4 => Just(3u32), 1 => Just(2), 1 => any::<u32>()],
        prop::collection::vec(entry(), 0..6),
        prop::collection::vec(tensor_entry(), 0..6),
        prop::option::of(count()),
        prop::option::of(count()),
        prop::collection::vec(any::<u8>(), 0..300),
        prop_oneof![3 => Just(None), 1 => (1u64 << 20..1u64 << 34).prop_map(Some)],
    )
        .prop_map(
            |(version, entries, tensors, fake_tensors, fake_entries, data, stretch)| {
                let mut b = header(
                    version,
                    fake_tensors.unwrap_or(tensors.len() as u64),
                    fake_entries.unwrap_or(entries.len() as u64),
                );
                b.extend(entries.concat());
                b.extend(tensors.concat());
                b.resize(b.len().next_multiple_of(32), 0);
                b.extend(data);
                (b, stretch)
            },
        )
}

/// Random and hostile headers, some in sparse files of up to 16 GiB: a header whose
/// tensors lie in the file, apart, or an `InvalidGguf`; never a panic, in bounded time.
/// Runs in a child process whose address space is the largest file's mapping and 2 GiB.
#[test]
fn hostile_headers_end_in_a_typed_error() {
    if !is_test_child() {
        let address_space = (1u64 << 34) + (2 << 30);
        run_test_in_child(
            "hostile_headers_end_in_a_typed_error",
            address_space,
            CHILD_DEADLINE,
        );
        return;
    }
    proptest!(ProptestConfig::with_cases(256), |(file in hostile_file())| {
        let (bytes, stretch) = file;
        let path = std::env::temp_dir().join(format!(
            "llmjp-gguf-fuzz-{}-{:?}.gguf",
            std::process::id(),
            std::thread::current().id()
        ));
        let out = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut &out, &bytes).unwrap();
        if let Some(len) = stretch {
            out.set_len(bytes.len() as u64 + len).unwrap();
        }
        drop(out);
        let start = std::time::Instant::now();
        let result = GgufFile::open(&path);
        prop_assert!(start.elapsed().as_secs() < 5, "took {:?}", start.elapsed());
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        std::fs::remove_file(&path).unwrap();
        match result {
            Ok(file) => {
                let mut ranges: Vec<_> = file.header().tensors.iter().filter(|t| t.len > 0).map(|t| (t.start, t.start + t.len)).collect();
                ranges.sort();
                prop_assert!(ranges.iter().all(|&(_, end)| end <= len));
                prop_assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0));
            }
            Err(WeightsError::InvalidGguf { .. }) => {}
            Err(other) => prop_assert!(false, "not an InvalidGguf: {other}"),
        }
    });
}

mod llama {
    use llmjp_weights::gguf::llama::{hf_name, hf_row_order, HfTensor};
    use llmjp_weights::{Architecture, ModelConfig, WeightsError};

    use super::{parse, string, Writer};

    /// llama.cpp's `permute` (convert_hf_to_gguf.py) on row indices: the HF row each GGUF
    /// row holds. `reshape(n_head, 2, rows / n_head / 2).swapaxes(1, 2).reshape(rows)`.
    fn llama_cpp_permute(rows: usize, heads: usize) -> Vec<usize> {
        let half = rows / heads / 2;
        let mut out = Vec::new();
        for h in 0..heads {
            for i in 0..half {
                for pair in 0..2 {
                    out.push(h * 2 * half + pair * half + i);
                }
            }
        }
        out
    }

    #[test]
    fn row_order_undoes_llama_cpp_permutation() {
        for (rows, heads) in [(8, 2), (2048, 16), (5120, 40), (1024, 8), (64, 1)] {
            let gguf_holds = llama_cpp_permute(rows, heads);
            let order = hf_row_order(rows, heads);
            // HF row r is GGUF row order[r], which holds HF row r.
            for (r, &g) in order.iter().enumerate() {
                assert_eq!(gguf_holds[g], r, "rows {rows} heads {heads}");
            }
        }
    }

    #[test]
    fn tensor_names_map_to_hugging_face() {
        let dense = |s: &str| Some(HfTensor::Dense(s.into()));
        assert_eq!(
            hf_name("token_embd.weight"),
            dense("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("output.weight"), dense("lm_head.weight"));
        assert_eq!(hf_name("output_norm.weight"), dense("model.norm.weight"));
        assert_eq!(
            hf_name("blk.23.ffn_norm.weight"),
            dense("model.layers.23.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight"),
            dense("model.layers.0.mlp.down_proj.weight")
        );
        assert_eq!(
            hf_name("blk.1.ffn_gate_inp.weight"),
            dense("model.layers.1.block_sparse_moe.gate.weight")
        );
        assert_eq!(
            hf_name("blk.2.ffn_up_exps.weight"),
            Some(HfTensor::Experts {
                layer: 2,
                matrix: "w3"
            })
        );
        for unknown in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.0.attn_q.bias",
            "blk.0.nope.weight",
        ] {
            assert_eq!(hf_name(unknown), None, "{unknown}");
        }
    }

    fn u32_meta(w: &mut Writer, key: &str, value: u32) {
        w.meta(key, 4, &value.to_le_bytes());
    }

    /// llama.cpp's metadata for the llm-jp-3.1-1.8b.
    fn metadata_1_8b() -> Writer {
        let mut w = Writer::default();
        w.meta("general.architecture", 8, &string("llama"));
        for (key, value) in [
            ("llama.vocab_size", 99584),
            ("llama.context_length", 4096),
            ("llama.embedding_length", 2048),
            ("llama.block_count", 24),
            ("llama.feed_forward_length", 7168),
            ("llama.attention.head_count", 16),
            ("llama.attention.head_count_kv", 16),
            ("tokenizer.ggml.bos_token_id", 1),
            ("tokenizer.ggml.eos_token_id", 2),
        ] {
            u32_meta(&mut w, key, value);
        }
        w.meta("llama.rope.freq_base", 6, &10000f32.to_le_bytes());
        w.meta(
            "llama.attention.layer_norm_rms_epsilon",
            6,
            &1e-5f32.to_le_bytes(),
        );
        // An untied head (its data need not be the model's size for the config).
        w.tensor("output.weight", &[32, 1], 8, &[0; 34]);
        w
    }

    #[test]
    fn the_config_matches_the_models_config_json() {
        let gguf = parse(&metadata_1_8b().bytes()).unwrap();
        let config = gguf.model_config().unwrap();
        assert_eq!(config.architecture, Architecture::Llama);
        let expected = llmjp_testdata::configs_dir()
            .map(|d| ModelConfig::from_file(&d.join("llm-jp-3.1-1.8b.config.json")).unwrap());
        if let Some(expected) = expected {
            assert_eq!(config.vocab_size, expected.vocab_size);
            assert_eq!(config.hidden_size, expected.hidden_size);
            assert_eq!(config.intermediate_size, expected.intermediate_size);
            assert_eq!(config.num_hidden_layers, expected.num_hidden_layers);
            assert_eq!(config.num_attention_heads, expected.num_attention_heads);
            assert_eq!(config.num_key_value_heads, expected.num_key_value_heads);
            assert_eq!(config.head_dim, expected.head_dim);
            assert_eq!(
                config.max_position_embeddings,
                expected.max_position_embeddings
            );
            assert_eq!(config.rope_theta, expected.rope_theta);
            assert_eq!(config.tie_word_embeddings, expected.tie_word_embeddings);
            assert!((config.rms_norm_eps - expected.rms_norm_eps).abs() < 1e-9);
            assert_eq!(config.bos_token_id, expected.bos_token_id);
        }
        assert_eq!(config.eos_token_ids, [2]);
    }

    #[test]
    fn mixtures_unsupported_and_bad_metadata() {
        let mut moe = metadata_1_8b();
        u32_meta(&mut moe, "llama.expert_count", 8);
        u32_meta(&mut moe, "llama.expert_used_count", 2);
        let config = parse(&moe.bytes()).unwrap().model_config().unwrap();
        assert_eq!(config.architecture, Architecture::Mixtral);
        assert_eq!(
            (config.num_local_experts, config.num_experts_per_tok),
            (8, 2)
        );

        let mut other = Writer::default();
        other.meta("general.architecture", 8, &string("gpt2"));
        let err = parse(&other.bytes()).unwrap().model_config().unwrap_err();
        assert!(
            matches!(err, WeightsError::UnsupportedArchitecture { .. }),
            "{err}"
        );

        let mut missing = Writer::default();
        missing.meta("general.architecture", 8, &string("llama"));
        u32_meta(&mut missing, "llama.vocab_size", 10);
        let err = parse(&missing.bytes()).unwrap().model_config().unwrap_err();
        assert!(err.to_string().contains("llama.embedding_length"), "{err}");

        let mut huge = Writer::default();
        huge.meta("general.architecture", 8, &string("llama"));
        for (key, value) in [
            ("llama.vocab_size", 99584),
            ("llama.embedding_length", u32::MAX),
            ("llama.block_count", 24),
            ("llama.feed_forward_length", 7168),
            ("llama.attention.head_count", 16),
        ] {
            u32_meta(&mut huge, key, value);
        }
        let err = parse(&huge.bytes()).unwrap().model_config().unwrap_err();
        assert!(matches!(err, WeightsError::InvalidConfig { .. }), "{err}");

        let mut scaled = metadata_1_8b();
        scaled.meta("llama.rope.scaling.type", 8, &string("yarn"));
        let err = parse(&scaled.bytes()).unwrap().model_config().unwrap_err();
        assert!(matches!(err, WeightsError::InvalidConfig { .. }), "{err}");

        // Without output.weight the head is tied to the embeddings.
        let mut tied = Writer::default();
        tied.meta("general.architecture", 8, &string("llama"));
        for (key, value) in [
            ("llama.vocab_size", 100),
            ("llama.embedding_length", 64),
            ("llama.block_count", 2),
            ("llama.feed_forward_length", 128),
            ("llama.attention.head_count", 4),
        ] {
            u32_meta(&mut tied, key, value);
        }
        let config = parse(&tied.bytes()).unwrap().model_config().unwrap();
        assert!(config.tie_word_embeddings);
        assert_eq!(config.head_dim, 16);
    }
}

mod import {
    use llmjp_weights::gguf::import::import;
    use llmjp_weights::gguf::llama::checked_hf_row_order;
    use llmjp_weights::{Checkpoint, WeightsError};

    use super::gguf_support::{metadata, model, temp, tensors, values, HIDDEN, VOCAB};

    /// Imports `bytes` (written as a file) with the GGUF's own tokenizer.
    fn import_bytes(name: &str, bytes: &[u8]) -> Result<(), WeightsError> {
        let dir = temp(name);
        let file = dir.join("model.gguf");
        std::fs::write(&file, bytes).unwrap();
        let result = import(&file, None, &dir.join("out"), &mut |_, _| {}).map(|_| ());
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    fn refused(name: &str, bytes: &[u8], needles: &[&str]) {
        match import_bytes(name, bytes) {
            Err(WeightsError::InvalidGguf { message, .. }) => {
                for needle in needles {
                    assert!(
                        message.contains(needle),
                        "{name}: {message:?} lacks {needle:?}"
                    );
                }
            }
            other => panic!("{name}: expected an invalid-GGUF error, got {other:?}"),
        }
    }

    #[test]
    fn k_quant_tensors_import_as_stored_and_read_as_gguf_py_dequantizes() {
        use llmjp_weights::gguf::llama::hf_row_order;
        use llmjp_weights::kquant::{dequantize, KQuant};
        use llmjp_weights::Layout;

        let dir = temp("kquant-import");
        let file = dir.join("model.gguf");
        let (bytes, quantized) = super::gguf_support::kquant_model(3);
        std::fs::write(&file, bytes).unwrap();
        let out = dir.join("out");
        import(&file, None, &out, &mut |_, _| {}).unwrap();
        let checkpoint = Checkpoint::open(&out).unwrap();
        let names = [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
        ];
        for (name, tensor) in names.iter().zip(&quantized) {
            let (kind, gguf_bytes) = (tensor.kind, &tensor.bytes);
            let format = KQuant::from_ggml_type(kind).unwrap();
            assert_eq!(checkpoint.kquant(name), Some(format), "{name}");
            // Stored as the GGUF's super-blocks (q and k rows back in Hugging Face's order).
            let meta = checkpoint.meta(name).unwrap();
            assert_eq!(meta.shape, vec![256, format.block_bytes()], "{name}");
            let rows: Vec<f32> = dequantize(format, gguf_bytes).unwrap();
            let order: Vec<usize> = if name.contains("mlp") {
                (0..256).collect()
            } else {
                hf_row_order(256, 2)
            };
            let expected: Vec<f32> = order
                .iter()
                .flat_map(|&r| rows[r * 256..(r + 1) * 256].to_vec())
                .collect();
            let read = checkpoint
                .read::<f32>(name, &[256, 256], Layout::AsStored)
                .unwrap();
            assert_eq!(read, expected, "{name}");
            let transposed = checkpoint
                .read::<f32>(name, &[256, 256], Layout::Transposed)
                .unwrap();
            assert_eq!(transposed[1], expected[256], "{name}");
        }
        assert_eq!(
            checkpoint.kquant("model.layers.0.self_attn.v_proj.weight"),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_tiny_model_imports_and_loads() {
        let dir = temp("tiny-import");
        let file = dir.join("model.gguf");
        std::fs::write(&file, model(7)).unwrap();
        let out = dir.join("out");
        let imported = import(&file, None, &out, &mut |_, _| {}).unwrap();
        assert_eq!(imported.tensors, 2 + 9);
        let checkpoint = Checkpoint::open(&out).unwrap();
        assert!(checkpoint.contains("model.layers.0.self_attn.q_proj.weight"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn q_and_k_rows_that_are_not_whole_heads_are_refused_before_any_arithmetic() {
        // One row per head (fewer than 2 × heads), rows not a multiple of the heads, no heads.
        for (rows, heads) in [(2, 2), (1, 2), (6, 4), (8, 0), (0, 2), (6, 2)] {
            assert_eq!(
                checked_hf_row_order(rows, heads),
                None,
                "{rows} rows, {heads} heads"
            );
        }
        assert_eq!(
            checked_hf_row_order(8, 2).unwrap(),
            [0, 2, 1, 3, 4, 6, 5, 7]
        );
        // A q projection of 2 rows for 2 heads: refused on its shape, naming it.
        let mut w = metadata(1, VOCAB);
        w.tensor(
            "token_embd.weight",
            &[HIDDEN, VOCAB as u64],
            0,
            &values(HIDDEN * VOCAB as u64, 1),
        );
        w.tensor(
            "blk.0.attn_q.weight",
            &[HIDDEN, 2],
            0,
            &values(HIDDEN * 2, 2),
        );
        refused(
            "short-q",
            &w.bytes(),
            &["blk.0.attn_q.weight", "shape [2, 32]"],
        );
    }

    #[test]
    fn tensors_the_model_does_not_have_are_refused() {
        // A layer past the last (block_count says 1).
        let mut w = metadata(1, VOCAB);
        tensors(&mut w, 2, 5);
        refused(
            "extra-layer",
            &w.bytes(),
            &["blk.1.attn_norm.weight", "not a tensor of this model"],
        );
        // An unknown name.
        let mut w = metadata(1, VOCAB);
        tensors(&mut w, 1, 5);
        w.tensor("blk.0.attn_q.bias", &[HIDDEN], 0, &values(HIDDEN, 1));
        refused("unknown", &w.bytes(), &["unknown tensor blk.0.attn_q.bias"]);
        // Experts in a dense model.
        let mut w = metadata(1, VOCAB);
        tensors(&mut w, 1, 5);
        w.tensor(
            "blk.0.ffn_up_exps.weight",
            &[HIDDEN, HIDDEN, 2],
            0,
            &values(HIDDEN * HIDDEN * 2, 1),
        );
        refused(
            "experts",
            &w.bytes(),
            &["blk.0.ffn_up_exps.weight", "no experts"],
        );
        // The embedding of another vocabulary size.
        let mut w = metadata(1, VOCAB);
        w.tensor(
            "token_embd.weight",
            &[HIDDEN, 64],
            0,
            &values(HIDDEN * 64, 1),
        );
        refused(
            "embedding",
            &w.bytes(),
            &["token_embd.weight", "[64, 32]", "[32, 32]"],
        );
    }

    #[test]
    fn an_embedded_tokenizer_of_another_size_than_the_vocabulary_is_refused() {
        for (tokens, needle) in [(5, "nothing"), (VOCAB + 8, "past the embedding")] {
            let mut w = metadata(1, tokens);
            tensors(&mut w, 1, 9);
            let message = format!("{tokens} tokens for a model of {VOCAB}");
            refused(
                "tokenizer-size",
                &w.bytes(),
                &[&message, needle, "--tokenizer"],
            );
        }
    }
}
