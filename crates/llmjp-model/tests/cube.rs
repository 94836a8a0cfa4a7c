//! The cubecl kernels ([`CubeKernels`]) against transformers on the tiny fixtures: on a GPU
//! with `--features cuda` (f32 and bf16; skipped with a message without a driver), and on
//! any Vulkan device with `--features vulkan` (f32 and f16: Mesa's lavapipe runs them on the
//! CPU in CI; skipped without a Vulkan driver). Also: the set of compiled kernels does not
//! grow with the prompt or the output length, and a second process finds them cached; the
//! attention kernels (per row and split over positions) match attention's definition, and
//! the device MoE step the host dispatch.
#![cfg(any(feature = "cuda", feature = "vulkan"))]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use llmjp_model::backend::{Cpu, DecoderBackend};
use llmjp_model::cache::LayerCache;
use llmjp_model::cube::kernel_cache::{self, KernelCache};
use llmjp_model::cube::{kernels, CubeKernels, CubeQuantWeight, ATTENTION_MAX_LEN, GEMV_MAX_ROWS};
use llmjp_model::linear::{DenseWeight, Linear};
use llmjp_model::matrix::QuantMatrix;
use llmjp_model::ops::{sparse_moe, DecoderOps, Heads, LayerSeq, Reference, SeqSpan};
use llmjp_model::params::Mlp;
use llmjp_model::{
    read_f32, CausalLm, ComputeDtype, KvMemory, ModelConfig, ModelError, WeightDtype,
};
use llmjp_testdata::{argmax, max_abs_diff, model_reference, uniform, MODEL_FIXTURES as FIXTURES};
use llmjp_weights::quant::BlockFormat;
use llmjp_weights::Checkpoint;

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

/// A random `[rows, cols]` f32 tensor.
fn random<B: Backend>(rows: usize, cols: usize, device: &B::Device) -> Tensor<B, 2> {
    Tensor::random([rows, cols], Distribution::Normal(0.0, 1.0), device)
}

#[allow(clippy::too_many_arguments)]
/// Causal attention as defined, on the host: `q` `[rows, heads * d]`; `keys`, `values`
/// `[kv_heads, positions, d]` of one sequence whose rows `rows` stand from `start`.
fn host_attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    heads: Heads,
    positions: usize,
    rows: std::ops::Range<usize>,
    start: usize,
    out: &mut [f32],
) {
    let (h, d) = (heads.heads, heads.head_dim);
    let groups = heads.heads / heads.kv_heads;
    for (i, row) in rows.enumerate() {
        for head in 0..h {
            let qv = &q[(row * h + head) * d..][..d];
            let kv = head / groups;
            let seen = start + i + 1;
            let scores: Vec<f32> = (0..seen)
                .map(|p| {
                    let k = &keys[(kv * positions + p) * d..][..d];
                    qv.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() / (d as f32).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f32::MIN, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            for j in 0..d {
                let acc: f32 = (0..seen)
                    .map(|p| e[p] * values[(kv * positions + p) * d + j])
                    .sum();
                out[(row * h + head) * d + j] = acc / sum;
            }
        }
    }
}

/// The kernels' attention against its definition: prefill rows (one cube per row), decode
/// steps and caches past one cube's scores (split over chunks of positions, combined),
/// chunk edges, grouped heads, two sequences in one batch.
fn assert_attention_matches_definition<B: DecoderBackend>()
where
    CubeKernels: DecoderOps<B>,
{
    let device = B::Device::default();
    let heads = Heads {
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
    };
    let (d, capacity) = (heads.head_dim, ATTENTION_MAX_LEN + 300);
    let memory = KvMemory::default();
    // (first position, rows) of each sequence of a batch.
    let cases: [&[(usize, usize)]; 6] = [
        &[(0, 5)],
        &[(100, 30)],
        &[(700, 1)],
        &[(ATTENTION_MAX_LEN + 200, 1)],
        &[(ATTENTION_MAX_LEN - 10, 20)],
        &[(511, 2), (kernels::ATTENTION_CHUNK, 1)],
    ];
    for case in cases {
        let rows: usize = case.iter().map(|&(_, n)| n).sum();
        let q = random::<B>(rows, heads.heads * d, &device);
        let k = random::<B>(rows, heads.kv_heads * d, &device);
        let v = random::<B>(rows, heads.kv_heads * d, &device);
        let mut caches = Vec::new();
        let mut spans = Vec::new();
        for &(start, n) in case {
            let mut cache =
                CubeKernels.new_layer_cache(heads, capacity, ComputeDtype::F32, &device, &memory);
            if let LayerCache::Tensors { keys, values, .. } = &mut cache {
                let shape = [1, heads.kv_heads, capacity, d];
                *keys = Some(random::<B>(capacity, 2 * d, &device).reshape(shape));
                *values = Some(random::<B>(capacity, 2 * d, &device).reshape(shape));
            }
            let first = spans.last().map_or(0, |s: &SeqSpan| s.rows.end);
            spans.push(SeqSpan {
                rows: first..first + n,
                start,
            });
            caches.push(cache);
        }
        let mut batch: Vec<_> = spans
            .iter()
            .zip(caches.iter_mut())
            .map(|(span, cache)| LayerSeq {
                span: span.clone(),
                cache,
            })
            .collect();
        let got = CubeKernels
            .attention(q.clone(), k, v, heads, &mut batch)
            .unwrap();
        let got = read_f32(got).unwrap();
        // The caches as written (the new rows in place) define the expected result.
        let q = read_f32(q).unwrap();
        let mut expected = vec![0f32; got.len()];
        for (span, cache) in spans.iter().zip(&caches) {
            let LayerCache::Tensors {
                keys: Some(keys),
                values: Some(values),
                ..
            } = cache
            else {
                panic!("a device cache");
            };
            let (keys, values) = (
                read_f32(keys.clone()).unwrap(),
                read_f32(values.clone()).unwrap(),
            );
            host_attention(
                &q,
                &keys,
                &values,
                heads,
                capacity,
                span.rows.clone(),
                span.start,
                &mut expected,
            );
        }
        let err = max_abs_diff(&got, &expected);
        eprintln!("attention {case:?}: max abs error {err:.2e}");
        assert!(err <= 1e-4, "{case:?}: {err}");
    }
}

/// A decode step's mixture of experts on the device (routing, experts, weighted sum)
/// against the host dispatch on the reference ops, for top-1 and top-2 and several rows.
fn assert_device_moe_matches_dispatch<B: DecoderBackend>()
where
    CubeKernels: DecoderOps<B>,
{
    let device = B::Device::default();
    let (hidden, inter, experts) = (32, 48, 8);
    let linear = |out, inputs| Linear::new(DenseWeight::new(random::<B>(out, inputs, &device)));
    let router = linear(experts, hidden);
    let mlps: Vec<Mlp<B>> = (0..experts)
        .map(|_| Mlp {
            gate: linear(inter, hidden),
            up: linear(inter, hidden),
            down: linear(hidden, inter),
        })
        .collect();
    for (rows, top_k) in [(1, 2), (5, 2), (GEMV_MAX_ROWS, 1)] {
        let x = random::<B>(rows, hidden, &device);
        let expected = sparse_moe(&Reference, x.clone(), &router, &mlps, top_k).unwrap();
        let got = CubeKernels.moe(x, &router, &mlps, top_k).unwrap();
        let err = max_abs_diff(&read_f32(got).unwrap(), &read_f32(expected).unwrap());
        eprintln!("moe rows {rows} top-{top_k}: max abs error {err:.2e}");
        assert!(err <= 1e-3, "rows {rows} top-{top_k}: {err}");
    }
}

/// Reproducible values in [-1, 1), every 37th four times larger (so that blocks' scales
/// differ).
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut next = uniform(seed);
    (0..n)
        .map(|i| next() * if i % 37 == 0 { 8.0 } else { 2.0 })
        .collect()
}

/// Q8_0 / Q4_0 weights on the device against the formats' definition (the host's
/// dequantized matrix, products in f64): the dequantizing GEMV (up to `GEMV_MAX_ROWS`
/// rows), the GEMM on the dequantized matrix (more rows), and embedding rows (exact).
/// `make` puts a host matrix on the device as a linear weight.
fn assert_quant_weight_matches_definition<B: Backend>(
    make: fn(&QuantMatrix, &B::Device) -> Linear<B>,
) {
    let device = B::Device::default();
    for format in [BlockFormat::Q8_0, BlockFormat::Q4_0] {
        for (out, k) in [(40, 96), (300, 512)] {
            let values = pseudo_random(out * k, (out * k) as u64);
            let matrix = QuantMatrix::quantize(format, &values, out, k).unwrap();
            let dense = matrix.dequantize();
            let weight = make(&matrix, &device);
            assert_eq!(weight.shape(), [out, k]);
            for rows in [1, 3, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1, 37] {
                let x = pseudo_random(rows * k, rows as u64 + 7);
                let expected: Vec<f32> = (0..rows * out)
                    .map(|i| {
                        let (r, f) = (i / out, i % out);
                        (0..k)
                            .map(|c| x[r * k + c] as f64 * dense[f * k + c] as f64)
                            .sum::<f64>() as f32
                    })
                    .collect();
                let input =
                    Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(x, [rows, k]), &device);
                let got = read_f32(weight.forward(input).unwrap()).unwrap();
                let err = max_abs_diff(&got, &expected);
                eprintln!("{format} [{out}, {k}] × {rows} rows: max abs error {err:.2e}");
                assert!(err <= 1e-4 * (k as f32).sqrt(), "{format} {rows}: {err}");
            }
            let ids = [0, out as u32 - 1, 7, 7];
            let rows = weight
                .rows(&ids, ComputeDtype::F32, &device)
                .and_then(read_f32)
                .unwrap();
            for (row, &id) in rows.chunks(k).zip(&ids) {
                assert_eq!(row, &dense[id as usize * k..][..k], "{format} row {id}");
            }
            let outside = weight.rows(&[out as u32], ComputeDtype::F32, &device);
            assert!(
                matches!(outside, Err(ModelError::InvalidToken { .. })),
                "{outside:?}"
            );
        }
    }
}

/// The fixtures quantized on load (Q8_0, Q4_0) on the cube kernels against the same
/// weights on the CPU's reference ops (f32 activations, dequantized weights): the logits of
/// a prefill (the GEMM) and of decode steps (the GEMV), Mixtral's quantized experts
/// included. Only the order of the sums differs.
fn assert_quantized_models_match_the_reference<B: DecoderBackend>()
where
    CubeKernels: DecoderOps<B>,
{
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 200 + 3).collect();
    for name in FIXTURES {
        let dir = llmjp_testdata::fixture_dir(name);
        let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let checkpoint = Checkpoint::open(&dir).unwrap();
        for format in [BlockFormat::Q8_0, BlockFormat::Q4_0] {
            let dtype = WeightDtype {
                compute: ComputeDtype::F32,
                quantize: Some(format),
            };
            let cube = CausalLm::<B>::load_with_ops(
                config.clone(),
                &checkpoint,
                dtype,
                &Default::default(),
                Arc::new(CubeKernels),
                &mut |_, _| {},
            )
            .unwrap();
            let cpu = CausalLm::<Cpu>::load_with_ops(
                config.clone(),
                &checkpoint,
                dtype,
                &Default::default(),
                Arc::new(Reference),
                &mut |_, _| {},
            )
            .unwrap();
            let (mut cube_cache, mut cpu_cache) = (cube.new_cache(40), cpu.new_cache(40));
            let mut got = read_f32(cube.forward(&prompt, &mut cube_cache).unwrap()).unwrap();
            let mut expected = read_f32(cpu.forward(&prompt, &mut cpu_cache).unwrap()).unwrap();
            let mut next = argmax(&expected[expected.len() - config.vocab_size..]);
            for _ in 0..8 {
                got.extend(values(cube.forward_last(&[next], &mut cube_cache).unwrap()));
                let step = values(cpu.forward_last(&[next], &mut cpu_cache).unwrap());
                next = argmax(&step);
                expected.extend(step);
            }
            let err = max_abs_diff(&got, &expected);
            eprintln!("{name} {format}: max abs logit error against the CPU reference {err:.2e}");
            assert!(err <= 1e-3, "{name} {format}: {err}");
        }
    }
}

#[cfg(feature = "vulkan")]
mod vulkan {
    use super::*;
    use cubecl::wgpu::WgpuRuntime;
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

    #[test]
    fn attention_matches_its_definition_on_vulkan() {
        let _turn = setup();
        if available() {
            assert_attention_matches_definition::<Vulkan>();
        }
    }

    #[test]
    fn device_moe_matches_the_host_dispatch_on_vulkan() {
        let _turn = setup();
        if available() {
            assert_device_moe_matches_dispatch::<Vulkan>();
        }
    }

    #[test]
    fn quantized_weights_match_their_definition_on_vulkan() {
        let _turn = setup();
        if available() {
            assert_quant_weight_matches_definition::<Vulkan>(|m, d| {
                Linear::new(CubeQuantWeight::<WgpuRuntime, f32, i32, u32>::new(m, d))
            });
        }
    }

    #[test]
    fn quantized_models_match_the_reference_on_vulkan() {
        let _turn = setup();
        if available() {
            assert_quantized_models_match_the_reference::<Vulkan>();
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use cubecl::cuda::CudaRuntime;
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

    #[test]
    fn attention_matches_its_definition_on_cuda() {
        let _turn = setup();
        if available() {
            assert_attention_matches_definition::<Cuda>();
        }
    }

    #[test]
    fn device_moe_matches_the_host_dispatch_on_cuda() {
        let _turn = setup();
        if available() {
            assert_device_moe_matches_dispatch::<Cuda>();
        }
    }

    #[test]
    fn quantized_weights_match_their_definition_on_cuda() {
        let _turn = setup();
        if available() {
            assert_quant_weight_matches_definition::<Cuda>(|m, d| {
                Linear::new(CubeQuantWeight::<CudaRuntime, f32, i32, u8>::new(m, d))
            });
        }
    }

    #[test]
    fn quantized_models_match_the_reference_on_cuda() {
        let _turn = setup();
        if available() {
            assert_quantized_models_match_the_reference::<Cuda>();
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
