//! Reading safetensors checkpoints, and every way a checkpoint can be broken.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use half::{bf16, f16};
use llmjp_weights::{Checkpoint, Layout, WeightsError};
use proptest::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("llmjp-w-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A safetensors file with `tensors` (name, dtype, shape, raw bytes).
fn safetensors_bytes(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: HashMap<String, TensorView<'_>> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            (
                name.to_string(),
                TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(&views, None).unwrap()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect()
}

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect()
}

const VALUES: [f32; 6] = [1.0, -2.0, 0.5, 3.25, -0.125, 8.0];

fn sample_file() -> Vec<u8> {
    safetensors_bytes(&[
        ("a.f32", Dtype::F32, vec![2, 3], f32_bytes(&VALUES)),
        ("a.bf16", Dtype::BF16, vec![2, 3], bf16_bytes(&VALUES)),
        ("a.f16", Dtype::F16, vec![6], f16_bytes(&VALUES)),
        ("ints", Dtype::I32, vec![2], vec![0; 8]),
    ])
}

#[test]
fn reads_every_float_dtype_into_every_element_type() {
    let dir = TempDir::new("dtypes");
    fs::write(dir.0.join("model.safetensors"), sample_file()).unwrap();
    let ckpt = Checkpoint::open(&dir.0).unwrap();
    assert_eq!(ckpt.names(), ["a.bf16", "a.f16", "a.f32", "ints"]);
    for name in ["a.f32", "a.bf16"] {
        let v: Vec<f32> = ckpt.read(name, &[2, 3], Layout::AsStored).unwrap();
        assert_eq!(v, VALUES, "{name}");
        let t: Vec<f32> = ckpt.read(name, &[2, 3], Layout::Transposed).unwrap();
        assert_eq!(t, [1.0, 3.25, -2.0, -0.125, 0.5, 8.0]);
        let h: Vec<f16> = ckpt.read(name, &[2, 3], Layout::AsStored).unwrap();
        assert_eq!(h[3], f16::from_f32(3.25));
        let b: Vec<bf16> = ckpt.read(name, &[2, 3], Layout::AsStored).unwrap();
        assert_eq!(b[5], bf16::from_f32(8.0));
    }
    let v: Vec<f32> = ckpt.read("a.f16", &[6], Layout::AsStored).unwrap();
    assert_eq!(v, VALUES);
    assert_eq!(ckpt.meta("a.bf16").unwrap().dtype, Dtype::BF16);
}

#[test]
fn sharded_checkpoints_are_one_namespace() {
    let dir = TempDir::new("sharded");
    let one = safetensors_bytes(&[("x", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0]))]);
    let two = safetensors_bytes(&[("y", Dtype::BF16, vec![1], bf16_bytes(&[3.0]))]);
    fs::write(dir.0.join("model-00001-of-00002.safetensors"), one).unwrap();
    fs::write(dir.0.join("model-00002-of-00002.safetensors"), two).unwrap();
    let index = r#"{"metadata": {}, "weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}"#;
    fs::write(dir.0.join("model.safetensors.index.json"), index).unwrap();
    let ckpt = Checkpoint::open(&dir.0).unwrap();
    assert_eq!(
        ckpt.read::<f32>("y", &[1], Layout::AsStored).unwrap(),
        [3.0]
    );
    assert_eq!(
        ckpt.read::<f32>("x", &[2], Layout::AsStored).unwrap(),
        [1.0, 2.0]
    );
}

#[test]
fn missing_shard_or_index_problems() {
    let dir = TempDir::new("missingshard");
    fs::write(
        dir.0.join("model.safetensors.index.json"),
        r#"{"weight_map": {"x": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let err = Checkpoint::open(&dir.0).unwrap_err();
    assert!(
        matches!(&err, WeightsError::NotFound { path } if path.ends_with("model-00001-of-00002.safetensors")),
        "{err}"
    );

    fs::write(
        dir.0.join("model.safetensors.index.json"),
        r#"{"weight_map": 3}"#,
    )
    .unwrap();
    assert!(matches!(
        Checkpoint::open(&dir.0),
        Err(WeightsError::Json { .. })
    ));

    fs::write(
        dir.0.join("model.safetensors.index.json"),
        r#"{"weight_map": {"x": "../../etc/passwd"}}"#,
    )
    .unwrap();
    assert!(matches!(
        Checkpoint::open(&dir.0),
        Err(WeightsError::InvalidConfig { .. })
    ));

    let empty = TempDir::new("empty");
    let err = Checkpoint::open(&empty.0).unwrap_err();
    assert!(matches!(&err, WeightsError::NotFound { path } if path.ends_with("model.safetensors")));
}

/// Views hand out any dtype as stored (an int8 format's data, say); reading as floats
/// still refuses them.
#[test]
fn views_hand_out_every_dtype_as_stored() {
    let dir = TempDir::new("views");
    fs::write(dir.0.join("model.safetensors"), sample_file()).unwrap();
    let ckpt = Checkpoint::open(&dir.0).unwrap();
    let ints = ckpt.view("ints", &[2]).unwrap();
    assert_eq!(ints.dtype(), llmjp_weights::Dtype::I32);
    assert_eq!(ints.shape(), [2]);
    assert_eq!(ints.bytes(), [0; 8]);
    let bf = ckpt.view("a.bf16", &[2, 3]).unwrap();
    assert_eq!(bf.dtype(), llmjp_weights::Dtype::BF16);
    assert_eq!(bf.bytes(), bf16_bytes(&VALUES));
    bf.populate();
    assert!(matches!(
        ckpt.view("a.bf16", &[3, 2]),
        Err(WeightsError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ckpt.view("nope", &[1]),
        Err(WeightsError::MissingTensor { .. })
    ));
}

#[test]
fn tensor_level_errors_name_the_tensor() {
    let dir = TempDir::new("tensorerrors");
    fs::write(dir.0.join("model.safetensors"), sample_file()).unwrap();
    let ckpt = Checkpoint::open(&dir.0).unwrap();
    let err = ckpt
        .read::<f32>("nope", &[1], Layout::AsStored)
        .unwrap_err();
    assert!(matches!(&err, WeightsError::MissingTensor { name, .. } if name == "nope"));
    let err = ckpt
        .read::<f32>("a.f32", &[3, 2], Layout::AsStored)
        .unwrap_err();
    match &err {
        WeightsError::ShapeMismatch {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "a.f32");
            assert_eq!(expected, &[3, 2]);
            assert_eq!(found, &[2, 3]);
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("expected [3, 2]"));
    let err = ckpt
        .read::<f32>("ints", &[2], Layout::AsStored)
        .unwrap_err();
    assert!(
        matches!(&err, WeightsError::UnsupportedDtype { dtype, .. } if *dtype == Dtype::I32),
        "{err}"
    );
}

#[test]
fn truncated_and_corrupt_files() {
    let good = sample_file();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short header length", vec![1, 2, 3]),
        ("truncated data", good[..good.len() - 5].to_vec()),
        ("trailing bytes", [good.clone(), vec![0; 4]].concat()),
        ("header length past end", {
            let mut b = good.clone();
            b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            b
        }),
        ("header not json", {
            let mut b = 4u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{{{{");
            b
        }),
        ("offsets past the end", {
            let header = br#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(header);
            b.extend_from_slice(&[0; 8]);
            b
        }),
        ("shape disagrees with offsets", {
            let header = br#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(header);
            b.extend_from_slice(&[0; 8]);
            b
        }),
    ];
    for (label, bytes) in cases {
        let dir = TempDir::new("corrupt");
        fs::write(dir.0.join("model.safetensors"), bytes).unwrap();
        let err = Checkpoint::open(&dir.0).unwrap_err();
        assert!(
            matches!(err, WeightsError::InvalidSafetensors { .. }),
            "{label}: {err}"
        );
        assert!(err.to_string().contains("model.safetensors"), "{label}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Flipped, cut or inserted bytes anywhere give an error or a readable checkpoint,
    /// never a panic.
    #[test]
    fn mangled_files_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = sample_file();
        for (at, value, kind) in edits {
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = value,
                1 => bytes.insert(i, value),
                _ => { bytes.remove(i); }
            }
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let dir = TempDir::new("prop");
        fs::write(dir.0.join("model.safetensors"), &bytes).unwrap();
        if let Ok(ckpt) = Checkpoint::open(&dir.0) {
            for name in ckpt.names() {
                let meta = ckpt.meta(name).unwrap();
                let _ = ckpt.read::<f32>(name, &meta.shape, Layout::AsStored);
                if meta.shape.len() == 2 {
                    let _ = ckpt.read::<bf16>(name, &meta.shape, Layout::Transposed);
                }
            }
        }
    }
}

/// Run by `truncating_a_mapped_checkpoint_is_explained` in a child process: maps a
/// checkpoint, truncates it, then reads the lost pages.
#[test]
fn sigbus_child() {
    let Ok(dir) = std::env::var("LLMJP_SIGBUS_CHILD") else {
        return;
    };
    let dir = PathBuf::from(dir);
    llmjp_weights::sigbus::install_handler();
    let values = vec![1.0f32; 1 << 20];
    let path = dir.join("model.safetensors");
    fs::write(
        &path,
        safetensors_bytes(&[("w", Dtype::F32, vec![1 << 20], f32_bytes(&values))]),
    )
    .unwrap();
    let checkpoint = Checkpoint::open(&dir).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let w: Vec<f32> = checkpoint.read("w", &[1 << 20], Layout::AsStored).unwrap();
    println!("read {} values without a fault", w.len());
}

/// The SIGBUS disposition of this process now.
#[cfg(target_os = "linux")]
fn sigbus_disposition() -> usize {
    // SAFETY: sigaction only reads the current action into a zeroed struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old);
        old.sa_sigaction
    }
}

/// A library takes no signal: opening a checkpoint leaves the process's SIGBUS handler as
/// it was (the application opts in with `sigbus::install_handler`).
#[cfg(target_os = "linux")]
#[test]
fn opening_a_checkpoint_installs_no_signal_handler() {
    let dir = TempDir::new("no-sigbus-handler");
    let before = sigbus_disposition();
    fs::write(
        dir.0.join("model.safetensors"),
        safetensors_bytes(&[("w", Dtype::F32, vec![4], f32_bytes(&[1.0; 4]))]),
    )
    .unwrap();
    let checkpoint = Checkpoint::open(&dir.0).unwrap();
    let _: Vec<f32> = checkpoint.read("w", &[4], Layout::AsStored).unwrap();
    assert_eq!(sigbus_disposition(), before);
}

#[cfg(target_os = "linux")]
#[test]
fn truncating_a_mapped_checkpoint_is_explained() {
    let dir = TempDir::new("sigbus");
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigbus_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("LLMJP_SIGBUS_CHILD", &dir.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(135), "stderr: {stderr}");
    assert!(
        stderr.contains("model.safetensors was truncated or changed while llmjp had it mapped"),
        "{stderr}"
    );
}
