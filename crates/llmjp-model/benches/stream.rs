//! Decode GEMVs (one activation row) streaming weights from memory, as a decode step does:
//! the 1.8b's layer matrices, bf16 against Q8_0 / Q4_0, over more matrices than the last-level
//! cache holds, so every byte comes from DRAM. Reports GB/s and the time ratio.
//! `cargo bench -p llmjp-model --bench stream` (the quantized matrices repacked as the CPU
//! kernels run them from AVX2 up; `STREAM_UNREPACKED=1` for `QuantMatrix`'s own kernels).

use std::time::Instant;

use half::bf16;
use llmjp_model::cpu::Isa;
use llmjp_model::matrix::{Bf16Matrix, InterleavedQuantMatrix, QuantMatrix};
use llmjp_weights::quant::BlockFormat;

/// Layers of matrices streamed per pass (about 0.7 GB in bf16).
const LAYERS: usize = 6;
/// The 1.8b's per-layer shapes `(out, in)`: q, k, v, o, gate, up, down.
const SHAPES: [(usize, usize); 7] = [
    (2048, 2048),
    (2048, 2048),
    (2048, 2048),
    (2048, 2048),
    (7168, 2048),
    (7168, 2048),
    (2048, 7168),
];

/// The median of `n` timed passes after one warm-up, in seconds.
fn median<F: FnMut()>(n: usize, mut f: F) -> f64 {
    f();
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[n / 2]
}

fn main() {
    let isa = Isa::selected().unwrap_or_else(|e| panic!("{e}"));
    let shapes: Vec<(usize, usize)> = (0..LAYERS).flat_map(|_| SHAPES).collect();
    let values = |n: usize, k: usize, seed: usize| -> Vec<f32> {
        (0..n * k)
            .map(|i| (((i + seed) * 7919) % 2001) as f32 * 1e-4 - 0.1)
            .collect()
    };
    let bf16s: Vec<Bf16Matrix> = shapes
        .iter()
        .enumerate()
        .map(|(s, &(n, k))| {
            let v = values(n, k, s).into_iter().map(bf16::from_f32).collect();
            Bf16Matrix::from_vec(v, n, k)
        })
        .collect();
    let quant = |format| -> Vec<QuantMatrix> {
        shapes
            .iter()
            .enumerate()
            .map(|(s, &(n, k))| QuantMatrix::quantize(format, &values(n, k, s), n, k).unwrap())
            .collect()
    };
    let (q8, q4) = (quant(BlockFormat::Q8_0), quant(BlockFormat::Q4_0));
    // What the CPU kernels multiply from AVX2 up: the blocks repacked (the same bytes).
    let repacked = |ms: &[QuantMatrix]| -> Vec<InterleavedQuantMatrix> {
        ms.iter().map(InterleavedQuantMatrix::new).collect()
    };
    let (i8s, i4s) = (repacked(&q8), repacked(&q4));
    let old = std::env::var_os("STREAM_UNREPACKED").is_some();
    let x: Vec<f32> = (0..7168)
        .map(|i| ((i * 104729) % 1000) as f32 * 1e-3)
        .collect();
    let bytes = |per_weight: f64| -> f64 {
        shapes
            .iter()
            .map(|&(n, k)| (n * k) as f64 * per_weight)
            .sum()
    };
    println!("kernels: {isa}; {} matrices per pass", shapes.len());
    for round in 0..3 {
        let t_bf16 = median(5, || {
            for m in &bf16s {
                std::hint::black_box(m.matmul(isa, &x[..m.cols()], 1));
            }
        });
        let t_q = [(&q8, &i8s), (&q4, &i4s)].map(|(ms, is)| {
            median(5, || {
                if isa < Isa::Avx2 || old {
                    for m in ms.iter() {
                        std::hint::black_box(m.matmul(isa, &x[..m.cols()], 1));
                    }
                } else {
                    for m in is.iter() {
                        std::hint::black_box(m.matmul(isa, &x[..m.cols()], 1));
                    }
                }
            })
        });
        println!(
            "round {round}: bf16 {:.1} ms {:.1} GB/s | q8_0 {:.1} ms {:.1} GB/s, {:.2}x | q4_0 {:.1} ms {:.1} GB/s, {:.2}x",
            t_bf16 * 1e3,
            bytes(2.0) / t_bf16 / 1e9,
            t_q[0] * 1e3,
            bytes(34.0 / 32.0) / t_q[0] / 1e9,
            t_bf16 / t_q[0],
            t_q[1] * 1e3,
            bytes(18.0 / 32.0) / t_q[1] / 1e9,
            t_bf16 / t_q[1],
        );
    }
}
