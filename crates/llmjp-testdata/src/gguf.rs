//! A GGUF writer for tests.

/// Writes GGUF files (version 3) for the tests: metadata as raw typed values, tensors as
/// GGML stores them.
#[derive(Default)]
pub struct Writer {
    metadata: Vec<u8>,
    metadata_count: u64,
    infos: Vec<u8>,
    tensor_count: u64,
    data: Vec<u8>,
}

/// A GGUF string.
pub fn string(s: &str) -> Vec<u8> {
    [
        (s.len() as u64).to_le_bytes().to_vec(),
        s.as_bytes().to_vec(),
    ]
    .concat()
}

impl Writer {
    /// Adds a metadata value of GGUF type `kind` (its encoding as given).
    pub fn meta(&mut self, key: &str, kind: u32, value: &[u8]) -> &mut Self {
        self.metadata.extend(string(key));
        self.metadata.extend(kind.to_le_bytes());
        self.metadata.extend(value);
        self.metadata_count += 1;
        self
    }

    /// Adds a tensor: GGML dims (fastest first), GGML type, stored bytes.
    pub fn tensor(&mut self, name: &str, dims: &[u64], kind: u32, data: &[u8]) -> &mut Self {
        self.data.resize(self.data.len().next_multiple_of(32), 0);
        self.infos.extend(string(name));
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(kind.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend(data);
        self.tensor_count += 1;
        self
    }

    /// The file.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.tensor_count.to_le_bytes());
        out.extend(self.metadata_count.to_le_bytes());
        out.extend(&self.metadata);
        out.extend(&self.infos);
        out.resize(out.len().next_multiple_of(32), 0);
        out.extend(&self.data);
        out
    }
}

/// Random K-quant super-blocks of GGML type `kind` (12 Q4_K, 13 Q5_K, 14 Q6_K) for `n`
/// values (a multiple of 256): random bytes, the f16 scales finite (uniform in ±0.01).
pub fn kquant_blocks(kind: u32, n: u64, seed: u64) -> Vec<u8> {
    let (size, scales): (usize, &[usize]) = match kind {
        12 => (144, &[0, 2]),
        13 => (176, &[0, 2]),
        14 => (210, &[208]),
        _ => panic!("not a K-quant: {kind}"),
    };
    let mut next = crate::uniform(seed);
    let mut out = Vec::new();
    for _ in 0..n / 256 {
        let mut block: Vec<u8> = (0..size).map(|_| ((next() + 0.5) * 255.99) as u8).collect();
        for &at in scales {
            let d = half::f16::from_f32(next() * 0.01).to_le_bytes();
            block[at..at + 2].copy_from_slice(&d);
        }
        out.extend(block);
    }
    out
}
