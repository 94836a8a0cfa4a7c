//! The Q8_0 and Q4_0 codecs against references written from GGML's definitions
//! (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`, `dequantize_row_*`), byte for byte.

use half::f16;
use llmjp_weights::quant::{dequantize, quantize, BlockFormat, BLOCK};
use llmjp_weights::WeightsError;
use proptest::prelude::*;

/// GGML's Q8_0: `d = amax / 127`, `q = roundf(x * (1 / d))`, `d` stored as f16.
fn reference_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for block in x.chunks(32) {
        let mut amax = 0.0f32;
        for &v in block {
            if v.abs() > amax {
                amax = v.abs();
            }
        }
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for &v in block {
            out.push(((v * id).round() as i32) as i8 as u8);
        }
    }
    out
}

/// GGML's Q4_0: `d = max / -8` (max: the value of largest magnitude), nibbles
/// `min(15, (int8)(x * id + 8.5))`, value j low and j + 16 high.
fn reference_q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for block in x.chunks(32) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in block {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for j in 0..16 {
            let x0 = block[j] * id;
            let x1 = block[16 + j] * id;
            let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
            out.push(xi0 | (xi1 << 4));
        }
    }
    out
}

fn special_blocks() -> Vec<Vec<f32>> {
    let ramp: Vec<f32> = (0..32).map(|i| i as f32 * 0.37 - 5.0).collect();
    vec![
        vec![0.0; 32],
        ramp.clone(),
        ramp.iter().map(|v| -v).collect(),
        (0..32).map(|i| if i == 7 { -3.0 } else { 1.0 }).collect(),
        (0..32).map(|i| (i as f32 - 15.5) * 1e-6).collect(),
        (0..32).map(|i| (i as f32 - 15.5) * 1e4).collect(),
        // Ties: values at exactly half a step.
        (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect(),
    ]
}

#[test]
fn both_formats_match_the_definitions_on_special_blocks() {
    for block in special_blocks() {
        assert_eq!(
            quantize(BlockFormat::Q8_0, &block).unwrap(),
            reference_q8_0(&block),
            "{block:?}"
        );
        assert_eq!(
            quantize(BlockFormat::Q4_0, &block).unwrap(),
            reference_q4_0(&block),
            "{block:?}"
        );
    }
}

#[test]
fn known_bytes_and_values() {
    // One value of 127 sets d = 1: every q is the rounded value itself.
    let mut x = vec![0.0f32; 32];
    x[0] = 127.0;
    x[1] = -2.5; // rounds away from zero
    x[2] = 2.4;
    let q = quantize(BlockFormat::Q8_0, &x).unwrap();
    assert_eq!(&q[..2], &f16::from_f32(1.0).to_le_bytes());
    assert_eq!(&q[2..5], &[127, (-3i8) as u8, 2]);
    assert_eq!(
        dequantize(BlockFormat::Q8_0, &q).unwrap()[..3],
        [127.0, -3.0, 2.0]
    );
    // Q4_0: the largest magnitude, -8, sets d = 1; values shift by 8 into nibbles.
    let mut x = vec![0.0f32; 32];
    x[0] = -8.0;
    x[16] = 7.0;
    x[1] = 3.0;
    let q = quantize(BlockFormat::Q4_0, &x).unwrap();
    assert_eq!(&q[..2], &f16::from_f32(1.0).to_le_bytes());
    assert_eq!(q[2], 15 << 4); // 7 + 8 = 15 high, -8 + 8 = 0 low
    assert_eq!(q[3], (8 << 4) | 11);
    let back = dequantize(BlockFormat::Q4_0, &q).unwrap();
    assert_eq!(
        (back[0], back[1], back[16], back[17]),
        (-8.0, 3.0, 7.0, 0.0)
    );
}

#[test]
fn partial_blocks_are_errors() {
    assert!(matches!(
        quantize(BlockFormat::Q8_0, &[1.0; 33]),
        Err(WeightsError::NotWholeBlocks { len: 33, block: 32 })
    ));
    assert!(matches!(
        dequantize(BlockFormat::Q4_0, &[0; 17]),
        Err(WeightsError::NotWholeBlocks { len: 17, block: 18 })
    ));
    assert_eq!(BlockFormat::Q8_0.block_bytes(), 34);
    assert_eq!(BlockFormat::Q4_0.name(), "q4_0");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_blocks_match_and_round_trip_within_half_a_step(
        x in prop::collection::vec(-100.0f32..100.0, BLOCK * 3),
    ) {
        let q8 = quantize(BlockFormat::Q8_0, &x).unwrap();
        prop_assert_eq!(&q8, &reference_q8_0(&x));
        let q4 = quantize(BlockFormat::Q4_0, &x).unwrap();
        prop_assert_eq!(&q4, &reference_q4_0(&x));
        let back8 = dequantize(BlockFormat::Q8_0, &q8).unwrap();
        let back4 = dequantize(BlockFormat::Q4_0, &q4).unwrap();
        for (i, block) in x.chunks(BLOCK).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            // Half a step, plus the scale's f16 rounding over 127 steps.
            let step8 = amax / 127.0;
            let step4 = amax / 8.0;
            for j in 0..BLOCK {
                let (v, a, b) = (block[j], back8[i * BLOCK + j], back4[i * BLOCK + j]);
                prop_assert!((v - a).abs() <= step8 * 0.5 + amax * 2e-3, "q8 {} vs {}", v, a);
                prop_assert!((v - b).abs() <= step4 * 1.0 + amax * 2e-3, "q4 {} vs {}", v, b);
            }
        }
    }
}
