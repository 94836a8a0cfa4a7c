//! Throughput of the bf16 and quantized (Q8_0, Q4_0) CPU kernels on the llm-jp-3.1-1.8b
//! shapes, against burn-flex's f32 matmul measured in the same run.
//!
//! `cargo bench -p llmjp-model --bench kernels` measures the selected instruction set;
//! `KERNELS_ISAS=avx2,avx512vnni` compares several in the same run (each timing the fastest
//! of 10 runs, instruction sets alternating run by run, ratios against the first), and
//! `KERNELS_ROWS=1,128` picks the activation row counts.

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use half::bf16;
use llmjp_model::backend::Cpu;
use llmjp_model::cpu::Isa;
use llmjp_model::matrix::{
    Bf16Matrix, InterleavedKQuantMatrix, InterleavedQuantMatrix, QuantMatrix,
};
use llmjp_weights::kquant::KQuant;
use llmjp_weights::quant::BlockFormat;

/// The fastest of 10 runs of each function after a warm-up, in seconds, the functions
/// taking turns.
fn time_alternating(fs: &mut [Box<dyn FnMut() + '_>]) -> Vec<f64> {
    for f in fs.iter_mut() {
        f();
    }
    let mut best = vec![f64::INFINITY; fs.len()];
    for _ in 0..10 {
        for (f, best) in fs.iter_mut().zip(&mut best) {
            let start = Instant::now();
            f();
            *best = best.min(start.elapsed().as_secs_f64());
        }
    }
    best
}

fn list<T>(var: &str, parse: impl Fn(&str) -> T, default: Vec<T>) -> Vec<T> {
    match std::env::var(var) {
        Ok(v) => v.split(',').map(|s| parse(s.trim())).collect(),
        Err(_) => default,
    }
}

fn main() {
    let isas = list(
        "KERNELS_ISAS",
        |s| s.parse::<Isa>().unwrap_or_else(|e| panic!("{e}")),
        vec![Isa::selected().unwrap_or_else(|e| panic!("{e}"))],
    );
    for isa in &isas {
        assert!(isa.is_supported(), "this CPU cannot run {isa}");
    }
    let rows_list = list(
        "KERNELS_ROWS",
        |s| s.parse::<usize>().expect("KERNELS_ROWS: numbers"),
        vec![1, 4, 8, 16, 128],
    );
    println!("kernels: {isas:?} (ratios against {})", isas[0]);
    let shapes = [(2048, 2048), (7168, 2048), (2048, 7168)];
    println!(
        "{:>6} {:>6} {:>6} {:>11} | {:>9} {:>8} | {:>9} {:>8} | {:>9} {:>8} | flex f32 ms",
        "rows", "out", "in", "isa", "bf16 ms", "GFLOP/s", "q8_0 ms", "GOP/s", "q4_0 ms", "GOP/s"
    );
    for &rows in &rows_list {
        for &(n, k) in &shapes {
            let w: Vec<bf16> = (0..n * k)
                .map(|i| bf16::from_f32(((i * 7919) % 1000) as f32 * 1e-4))
                .collect();
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 104729) % 1000) as f32 * 1e-3)
                .collect();
            let matrix = Bf16Matrix::from_vec(w.clone(), n, k);
            let values: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let quantized = [BlockFormat::Q8_0, BlockFormat::Q4_0]
                .map(|format| QuantMatrix::quantize(format, &values, n, k).unwrap());
            // What the CPU kernels multiply from AVX2 up: the blocks repacked.
            let interleaved = quantized.each_ref().map(InterleavedQuantMatrix::new);
            let device = Default::default();
            let wt: Vec<f32> = (0..k * n)
                .map(|i| w[(i % n) * k + i / n].to_f32())
                .collect();
            let wt = Tensor::<Cpu, 2>::from_data(TensorData::new(wt, [k, n]), &device);
            let xt = Tensor::<Cpu, 2>::from_data(TensorData::new(x.clone(), [rows, k]), &device);
            let mut runs: Vec<Box<dyn FnMut() + '_>> = Vec::new();
            for &isa in &isas {
                let (matrix, x) = (&matrix, &x);
                runs.push(Box::new(move || {
                    std::hint::black_box(matrix.matmul(isa, x, rows));
                }));
                for (q, i) in quantized.iter().zip(&interleaved) {
                    runs.push(Box::new(move || {
                        if isa >= Isa::Avx2 {
                            std::hint::black_box(i.matmul(isa, x, rows));
                        } else {
                            std::hint::black_box(q.matmul(isa, x, rows));
                        }
                    }));
                }
            }
            runs.push(Box::new(|| {
                std::hint::black_box(xt.clone().matmul(wt.clone()).into_data());
            }));
            let times = time_alternating(&mut runs);
            let flops = 2.0 * (rows * n * k) as f64;
            let flex = times[times.len() - 1];
            for (i, isa) in isas.iter().enumerate() {
                let t = &times[3 * i..3 * i + 3];
                let ratio = |j: usize| {
                    if i == 0 {
                        String::new()
                    } else {
                        format!(" ({:.2}x)", times[j] / t[j])
                    }
                };
                println!(
                    "{rows:>6} {n:>6} {k:>6} {:>11} | {:>9.3} {:>8.1} | {:>9.3} {:>8.1} | {:>9.3} {:>8.1} | {:.3}{}{}{}",
                    isa.name(),
                    t[0] * 1e3,
                    flops / t[0] / 1e9,
                    t[1] * 1e3,
                    flops / t[1] / 1e9,
                    t[2] * 1e3,
                    flops / t[2] / 1e9,
                    flex * 1e3,
                    ratio(0),
                    ratio(1),
                    ratio(2),
                );
            }
        }
    }
    kquants(&isas, &rows_list);
}

/// The K-quant kernels (AVX2 and up) on random super-blocks,
/// against the Q4_0 kernel in the same run.
fn kquants(isas: &[Isa], rows_list: &[usize]) {
    let isas: Vec<Isa> = isas.iter().copied().filter(|&i| i >= Isa::Avx2).collect();
    if isas.is_empty() {
        return;
    }
    println!("\nK-quants (Q4_0 in the same run for reference)");
    println!(
        "{:>6} {:>6} {:>6} {:>11} | {:>9} | {:>9} {:>8} | {:>9} {:>8} | {:>9} {:>8}",
        "rows",
        "out",
        "in",
        "isa",
        "q4_0 ms",
        "q4_k ms",
        "GOP/s",
        "q5_k ms",
        "GOP/s",
        "q6_k ms",
        "GOP/s"
    );
    let shapes = [(2048, 2048), (7168, 2048), (2048, 7168)];
    for &rows in rows_list {
        for &(n, k) in &shapes {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5)
                .collect();
            let values: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-4 - 0.05)
                .collect();
            let q4_0 = InterleavedQuantMatrix::new(
                &QuantMatrix::quantize(BlockFormat::Q4_0, &values, n, k).unwrap(),
            );
            let kq = KQuant::ALL.map(|format| {
                let bytes =
                    llmjp_testdata::gguf::kquant_blocks(format.ggml_type(), (n * k) as u64, 1);
                InterleavedKQuantMatrix::new(format, &bytes, n, k)
            });
            let mut runs: Vec<Box<dyn FnMut() + '_>> = Vec::new();
            for &isa in &isas {
                let (x, q4_0) = (&x, &q4_0);
                runs.push(Box::new(move || {
                    std::hint::black_box(q4_0.matmul(isa, x, rows));
                }));
                for m in &kq {
                    runs.push(Box::new(move || {
                        std::hint::black_box(m.matmul(isa, x, rows));
                    }));
                }
            }
            let times = time_alternating(&mut runs);
            let ops = 2.0 * (rows * n * k) as f64;
            for (i, isa) in isas.iter().enumerate() {
                let t = &times[4 * i..4 * i + 4];
                println!(
                    "{rows:>6} {n:>6} {k:>6} {:>11} | {:>9.3} | {:>9.3} {:>8.1} | {:>9.3} {:>8.1} | {:>9.3} {:>8.1}",
                    isa.name(),
                    t[0] * 1e3,
                    t[1] * 1e3,
                    ops / t[1] / 1e9,
                    t[2] * 1e3,
                    ops / t[2] / 1e9,
                    t[3] * 1e3,
                    ops / t[3] / 1e9,
                );
            }
        }
    }
}
