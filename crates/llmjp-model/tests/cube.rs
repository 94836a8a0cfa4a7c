//! The cubecl kernels ([`CubeKernels`]) against transformers on the tiny fixtures: on a GPU
//! with `--features cuda` (f32 and bf16; skipped with a message without a driver), and on
//! any Vulkan device with `--features vulkan` (f32 and f16: Mesa's lavapipe runs them on the
//! CPU in CI; skipped without a Vulkan driver). Also: the set of compiled kernels does not
//! grow with the prompt or the output length, and a second process finds them cached.
#![cfg(any(feature = "cuda", feature = "vulkan"))]

use std::path::PathBuf;
use std::sync::Mutex;

use burn::tensor::backend::Backend;
use llmjp_model::backend::DecoderBackend;
use llmjp_model::cube::kernel_cache::{self, KernelCache};
use llmjp_model::{read_f32, CausalLm, ComputeDtype};
use llmjp_testdata::{argmax, max_abs_diff, model_reference, MODEL_FIXTURES as FIXTURES};

/// One kernel cache per test process, in the target folder; the tests take turns (the
/// compilation counts need the device to themselves).
fn setup() -> std::sync::MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    let dir = std::env::var_os("LLMJP_TEST_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            llmjp_testdata::workspace_root()
                .join("target")
                .join(format!("kernel-cache-test-{}", std::process::id()))
        });
    kernel_cache::configure(Some(&dir));
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kernels compiled so far in this process's cache folder (its compilation cache's
/// entries).
fn compiled() -> usize {
    let Some(KernelCache::Dir { path, .. }) = kernel_cache::configured() else {
        panic!(
            "the kernel cache is not in effect: {:?}",
            kernel_cache::configured()
        );
    };
    count_entries(&path.join("compilation"))
}

fn count_entries(dir: &std::path::Path) -> usize {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                n += count_entries(&path);
            } else if path
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("toc"))
            {
                n += std::fs::read_to_string(&path)
                    .map(|s| s.matches("\"key\"").count())
                    .unwrap_or(0);
            }
        }
    }
    n
}

fn values<B: Backend>(t: burn::tensor::Tensor<B, 1>) -> Vec<f32> {
    read_f32(t).unwrap()
}

/// Prefill then `steps` greedy steps; the logits of the prefill and the tokens.
fn greedy<B: DecoderBackend>(
    model: &CausalLm<B>,
    prompt: &[u32],
    steps: usize,
) -> (Vec<f32>, Vec<u32>) {
    let mut cache = model.new_cache(prompt.len() + steps);
    let first = values(model.forward_last(prompt, &mut cache).unwrap());
    let mut logits = first.clone();
    let mut tokens = Vec::new();
    for _ in 0..steps {
        let next = argmax(&logits);
        tokens.push(next);
        logits = values(model.forward_last(&[next], &mut cache).unwrap());
    }
    (first, tokens)
}

/// Max logit error over all prompts of every fixture, and the greedy tokens that agree
/// with transformers before the first difference, per prompt.
fn parity<B: DecoderBackend>(dtype: ComputeDtype) -> Vec<(String, f32, Vec<usize>)> {
    let device = B::Device::default();
    FIXTURES
        .iter()
        .map(|name| {
            let dir = llmjp_testdata::fixture_dir(name);
            let model = CausalLm::<B>::from_dir(&dir, dtype, &device).unwrap();
            assert_eq!(model.ops().name(), "cube kernels");
            let reference = model_reference(name);
            let mut max_err = 0f32;
            let mut agree = Vec::new();
            for p in &reference.prompts {
                let (logits, tokens) = greedy(&model, &p.ids, p.greedy.len());
                max_err = max_err.max(max_abs_diff(&logits, &p.last_logits));
                agree.push(
                    tokens
                        .iter()
                        .zip(&p.greedy)
                        .take_while(|(a, b)| a == b)
                        .count(),
                );
            }
            eprintln!(
                "{name} {dtype}: max abs logit error {max_err:.2e}, greedy agreement {agree:?}"
            );
            (name.to_string(), max_err, agree)
        })
        .collect()
}

fn assert_f32_parity<B: DecoderBackend>() {
    for (name, err, agree) in parity::<B>(ComputeDtype::F32) {
        assert!(err <= 1e-3, "{name}: {err}");
        assert!(agree.iter().all(|&n| n == 32), "{name}: {agree:?}");
    }
}

/// Half-precision weights with f32 activations: the CPU bf16 kernels' tolerances. Weights
/// stored in bf16 lose nothing: logits within 0.02 and every greedy token; converted ones
/// within 0.1 and the first token.
fn assert_half_parity<B: DecoderBackend>(dtype: ComputeDtype) {
    for (name, err, agree) in parity::<B>(dtype) {
        let stored_bf16 = name.ends_with("-bf16");
        let (tolerance, needed) = if stored_bf16 { (0.02, 32) } else { (0.1, 1) };
        assert!(err <= tolerance, "{name} {dtype}: {err}");
        assert!(
            agree.iter().all(|&n| n >= needed),
            "{name} {dtype}: {agree:?}"
        );
    }
}

/// Generating from a longer prompt, for longer, compiles no kernel that a short run did
/// not (after both paths, prefill and decode, ran once).
fn assert_kernel_set_is_fixed<B: DecoderBackend>() {
    let device = B::Device::default();
    let dir = llmjp_testdata::fixture_dir(FIXTURES[0]);
    let model = CausalLm::<B>::from_dir(&dir, ComputeDtype::F32, &device).unwrap();
    let prompt: Vec<u32> = (1..40).collect();
    greedy(&model, &prompt[..12], 4);
    let after_short = compiled();
    greedy(&model, &prompt[..11], 3);
    greedy(&model, &prompt, 60);
    let after_long = compiled();
    eprintln!("kernels compiled: {after_short} after a short run, {after_long} after longer ones");
    assert!(after_short > 0, "nothing reached the compilation cache");
    assert_eq!(
        after_short, after_long,
        "the kernel set grew with the lengths"
    );
}

#[cfg(feature = "vulkan")]
mod vulkan {
    use super::*;
    use llmjp_model::backend::Vulkan;

    /// Whether a Vulkan driver is installed (wgpu panics without one).
    fn available() -> bool {
        let icd = |dir: &str| std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
        let ok = std::env::var_os("VK_ICD_FILENAMES").is_some()
            || icd("/usr/share/vulkan/icd.d")
            || icd("/etc/vulkan/icd.d");
        if !ok {
            eprintln!(
                "skipping: no Vulkan driver (apt-get install mesa-vulkan-drivers libvulkan1)"
            );
        }
        ok
    }

    #[test]
    fn f32_logits_and_greedy_match_transformers_on_vulkan() {
        let _turn = setup();
        if available() {
            assert_f32_parity::<Vulkan>();
        }
    }

    #[test]
    fn f16_weights_run_on_vulkan() {
        let _turn = setup();
        if available() {
            assert_half_parity::<Vulkan>(ComputeDtype::F16);
        }
    }

    #[test]
    fn the_kernel_set_does_not_grow_on_vulkan() {
        let _turn = setup();
        if available() {
            assert_kernel_set_is_fixed::<Vulkan>();
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use llmjp_model::backend::{cuda_available, Cuda};

    fn available() -> bool {
        let ok = cuda_available();
        if !ok {
            eprintln!("skipping: no CUDA driver (libcuda.so.1) on this machine");
        }
        ok
    }

    #[test]
    fn f32_logits_and_greedy_match_transformers_on_cuda() {
        let _turn = setup();
        if available() {
            assert_f32_parity::<Cuda>();
        }
    }

    #[test]
    fn bf16_weights_run_on_cuda() {
        let _turn = setup();
        if available() {
            assert_half_parity::<Cuda>(ComputeDtype::BF16);
        }
    }

    #[test]
    fn the_kernel_set_does_not_grow_on_cuda() {
        let _turn = setup();
        if available() {
            assert_kernel_set_is_fixed::<Cuda>();
        }
    }
}

/// The cache folder's upkeep (no device needed).
mod kernel_cache_folder {
    use super::*;
    use llmjp_model::cube::kernel_cache::prepare;
    use std::path::Path;

    const STAMP_FILE: &str = "llmjp-kernel-cache";

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("llmjp-kc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A compilation cache as cubecl 0.10 lays it out: a table of contents naming chunks.
    fn write_cache(dir: &Path, chunk_exists: bool) -> PathBuf {
        let spirv = dir.join("compilation/vulkan/0.10.0/spirv");
        std::fs::create_dir_all(&spirv).unwrap();
        std::fs::write(
            spirv.join("toc.json.log"),
            "{\"key\":[1,2],\"value\":\"chunk0.cbor\"}\n",
        )
        .unwrap();
        if chunk_exists {
            std::fs::write(spirv.join("chunk0.cbor"), b"\xa0").unwrap();
        }
        spirv
    }

    #[test]
    fn a_fresh_folder_is_cold_and_stamped() {
        let dir = scratch("fresh");
        assert!(prepare(&dir).unwrap());
        let stamp = std::fs::read_to_string(dir.join(STAMP_FILE)).unwrap();
        assert!(stamp.starts_with("llmjp-model "), "{stamp}");
    }

    #[test]
    fn a_consistent_cache_of_this_version_is_kept_warm() {
        let dir = scratch("warm");
        prepare(&dir).unwrap();
        let spirv = write_cache(&dir, true);
        assert!(!prepare(&dir).unwrap(), "a cache with kernels is warm");
        assert!(spirv.join("chunk0.cbor").is_file());
    }

    #[test]
    fn another_versions_cache_is_emptied() {
        let dir = scratch("stale");
        write_cache(&dir, true);
        std::fs::write(dir.join(STAMP_FILE), "llmjp-model 0.0.0, cubecl 0.9\n").unwrap();
        assert!(prepare(&dir).unwrap(), "emptied, so cold");
        assert!(!dir.join("compilation").exists());
    }

    #[test]
    fn a_table_of_contents_naming_a_missing_chunk_empties_the_cache() {
        // cubecl panics on such a cache; it is rebuilt instead.
        let dir = scratch("corrupt");
        prepare(&dir).unwrap();
        write_cache(&dir, false);
        assert!(prepare(&dir).unwrap());
        assert!(!dir.join("compilation").exists());
    }

    #[test]
    fn a_folder_that_cannot_be_made_is_an_error_for_the_caller_to_report() {
        let file = scratch("file");
        std::fs::write(&file, "not a folder").unwrap();
        assert!(prepare(&file.join("cubecl")).is_err());
    }
}
