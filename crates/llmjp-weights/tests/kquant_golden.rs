//! K-quant dequantization against gguf-py's (`xtask/golden/kquant_golden.py`): the same f32
//! values bit for bit, for random super-blocks of Q4_K, Q5_K and Q6_K.

use llmjp_weights::kquant::{dequantize, KQuant, SUPER_BLOCK};

#[test]
fn dequantization_equals_gguf_py_bit_for_bit() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/kquant.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for format in KQuant::ALL {
        let case = &golden["formats"][format.name()];
        let blocks: Vec<u8> = case["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|hex| {
                let hex = hex.as_str().unwrap();
                (0..hex.len() / 2)
                    .map(move |i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            })
            .collect();
        let expected: Vec<u32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(blocks.len() % format.block_bytes(), 0, "{format}");
        let ours = dequantize(format, &blocks).unwrap();
        assert_eq!(
            ours.len(),
            blocks.len() / format.block_bytes() * SUPER_BLOCK
        );
        for (i, (a, &b)) in ours.iter().zip(&expected).enumerate() {
            assert_eq!(
                a.to_bits(),
                b,
                "{format} value {i}: {a} vs {}",
                f32::from_bits(b)
            );
        }
    }
}

#[test]
fn quantization_equals_ggml_reference_byte_for_byte() {
    use llmjp_weights::kquant::quantize;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/kquant_quantize.json"
    );
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let x: Vec<f32> = golden["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| f32::from_bits(v.as_u64().unwrap() as u32))
        .collect();
    for format in KQuant::ALL {
        let hex = golden["formats"][format.name()].as_str().unwrap();
        let expected: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let ours = quantize(format, &x).unwrap();
        assert_eq!(ours.len(), expected.len(), "{format}");
        for (b, (a, e)) in ours
            .chunks(format.block_bytes())
            .zip(expected.chunks(format.block_bytes()))
            .enumerate()
        {
            assert_eq!(a, e, "{format} super-block {b}");
        }
        // And what they dequantize to stays near the input.
        let back = dequantize(format, &ours).unwrap();
        let err = back
            .iter()
            .zip(&x)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err.is_finite(), "{format}");
    }
}
