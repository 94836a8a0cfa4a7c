//! Throughput of the bf16 and quantized (Q8_0, Q4_0) CPU kernels on the llm-jp-3.1-1.8b
//! shapes, against burn-flex's f32 matmul measured in the same run.
//! `cargo bench -p llmjp-model --bench kernels`.

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use half::bf16;
use llmjp_model::backend::Cpu;
use llmjp_model::cpu::Isa;
use llmjp_model::matrix::{Bf16Matrix, QuantMatrix};
use llmjp_weights::quant::BlockFormat;

/// The fastest of 10 runs after a warm-up, in seconds.
fn time<F: FnMut()>(mut f: F) -> f64 {
    f();
    (0..10)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let isa = Isa::selected().unwrap_or_else(|e| panic!("{e}"));
    println!("kernels: {isa}");
    let shapes = [(2048, 2048), (7168, 2048), (2048, 7168)];
    println!(
        "{:>6} {:>6} {:>6} | {:>12} {:>12} | {:>12} {:>12} | ratio | {:>9} {:>9} | q8 / q4 vs bf16",
        "rows", "out", "in", "bf16 ms", "GFLOP/s", "flex f32 ms", "GFLOP/s", "q8_0 ms", "q4_0 ms"
    );
    for rows in [1usize, 4, 8, 16, 128] {
        for &(n, k) in &shapes {
            let w: Vec<bf16> = (0..n * k)
                .map(|i| bf16::from_f32(((i * 7919) % 1000) as f32 * 1e-4))
                .collect();
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 104729) % 1000) as f32 * 1e-3)
                .collect();
            let matrix = Bf16Matrix::from_vec(w.clone(), n, k);
            let ours = time(|| {
                std::hint::black_box(matrix.matmul(isa, &x, rows));
            });
            let device = Default::default();
            let wt: Vec<f32> = (0..k * n)
                .map(|i| w[(i % n) * k + i / n].to_f32())
                .collect();
            let wt = Tensor::<Cpu, 2>::from_data(TensorData::new(wt, [k, n]), &device);
            let xt = Tensor::<Cpu, 2>::from_data(TensorData::new(x.clone(), [rows, k]), &device);
            let flex = time(|| {
                std::hint::black_box(xt.clone().matmul(wt.clone()).into_data());
            });
            let quantized = [BlockFormat::Q8_0, BlockFormat::Q4_0].map(|format| {
                let values: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
                let q = QuantMatrix::quantize(format, &values, n, k).unwrap();
                time(|| {
                    std::hint::black_box(q.matmul(isa, &x, rows));
                })
            });
            let flops = 2.0 * (rows * n * k) as f64;
            println!(
                "{rows:>6} {n:>6} {k:>6} | {:>12.3} {:>12.1} | {:>12.3} {:>12.1} | {:.2}x | {:>9.3} {:>9.3} | {:.2}x / {:.2}x",
                ours * 1e3,
                flops / ours / 1e9,
                flex * 1e3,
                flops / flex / 1e9,
                flex / ours,
                quantized[0] * 1e3,
                quantized[1] * 1e3,
                ours / quantized[0],
                ours / quantized[1],
            );
        }
    }
}
