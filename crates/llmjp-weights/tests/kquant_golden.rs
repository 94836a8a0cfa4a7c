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
