//! [`CubeKernels`]: the op layer on burn's cubecl backends, run by the kernels of
//! [`super::kernels`].

use burn::tensor::{DType, FloatDType, Tensor, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::{empty_device_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::kernels;
use super::launch::{
    elementwise_count, empty_f32, f32_cube, feature_grid, gemm, tensor, upload_u32, Cube,
    ELEMENTWISE_UNITS, GEMV_MAX_ROWS, UNITS,
};
use super::quant::CubeQuantWeight;
use crate::cache::LayerCache;
use crate::kv_memory::KvMemory;
use crate::linear::{DenseWeight, Linear, Loader, Weight};
use crate::ops::{sparse_moe, DecoderOps, Heads, LayerSeq, SeqSpan};
use crate::params::{Mlp, RmsNorm, Rope};
use crate::{ComputeDtype, ModelError, Result};

/// Positions the one-cube-per-row attention kernel holds scores for (the models' context);
/// a longer cache runs the split-K kernels.
pub const ATTENTION_MAX_LEN: usize = 4096;
/// Experts up to which routing runs on the device (the routing kernel's bit mask).
const DEVICE_MOE_MAX_EXPERTS: usize = 32;
/// Elements per vector of the GEMV's loads: 16 bytes of bf16 weights per load. Widths not
/// a multiple run the GEMM.
const VECTOR: usize = 8;
/// The decoding kernels on burn's cubecl backends (`CubeBackend<R, ..>`: CUDA, Vulkan, …),
/// written once in cubecl: GEMV for decode (weights in their float dtype read once, f32
/// accumulation), a tiled GEMM for prefill (more than [`GEMV_MAX_ROWS`] rows; f32 products,
/// no tensor cores), RMSNorm, RoPE, attention over the KV cache (split over the positions,
/// flash-decoding style, when decoding or past [`ATTENTION_MAX_LEN`]), SwiGLU, and a decode
/// step's mixture of experts (routing and experts on the device, no host round trip).
/// Q8_0 / Q4_0 weights ([`CubeQuantWeight`]) run a GEMV that dequantizes as it multiplies,
/// and the GEMM on the matrix dequantized for a prefill. Activations and the KV cache are
/// f32. Dense embeddings, cache writes, a prefill's MoE routing (read back once per layer)
/// and quantized experts' routing run burn's ops ([`Reference`](crate::ops::Reference)).
#[derive(Debug, Clone, Copy, Default)]
pub struct CubeKernels;

impl<R, F, I, BT> DecoderOps<Cube<R, F, I, BT>> for CubeKernels
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn name(&self) -> &'static str {
        "cube kernels"
    }

    fn activation_dtype(&self, _weights: ComputeDtype) -> ComputeDtype {
        ComputeDtype::F32
    }

    fn load_linear(
        &self,
        loader: &Loader<'_, Cube<R, F, I, BT>>,
        name: &str,
        out: usize,
        inputs: usize,
    ) -> Result<Linear<Cube<R, F, I, BT>>> {
        if let Some(format) = loader.quantization(name, out, inputs)? {
            let matrix = loader.quant_matrix(name, out, inputs, format)?;
            return Ok(Linear::new(CubeQuantWeight::new(&matrix, loader.device)));
        }
        let weight = loader.tensor(name, [out, inputs], loader.weights)?;
        Ok(Linear::new(GemvWeight { weight }))
    }

    fn load_embedding(
        &self,
        loader: &Loader<'_, Cube<R, F, I, BT>>,
        name: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Linear<Cube<R, F, I, BT>>> {
        // A tied head multiplies by the table too.
        self.load_linear(loader, name, vocab, hidden)
    }

    fn new_layer_cache(
        &self,
        heads: Heads,
        capacity: usize,
        _dtype: ComputeDtype,
        device: &<Cube<R, F, I, BT> as burn::tensor::backend::BackendTypes>::Device,
        memory: &KvMemory,
    ) -> LayerCache<Cube<R, F, I, BT>> {
        let shape = [1, heads.kv_heads, capacity, heads.head_dim];
        LayerCache::zeros(shape, ComputeDtype::F32, device, memory)
    }

    fn embed(
        &self,
        table: &Linear<Cube<R, F, I, BT>>,
        ids: &[u32],
        _dtype: ComputeDtype,
        device: &<Cube<R, F, I, BT> as burn::tensor::backend::BackendTypes>::Device,
    ) -> Result<Tensor<Cube<R, F, I, BT>, 2>> {
        table.rows(ids, ComputeDtype::F32, device)
    }

    fn rms_norm(
        &self,
        x: Tensor<Cube<R, F, I, BT>, 2>,
        norm: &RmsNorm<Cube<R, F, I, BT>>,
    ) -> Result<Tensor<Cube<R, F, I, BT>, 2>> {
        let [rows, cols] = x.dims();
        let x = f32_cube(x);
        let weight = f32_cube(norm.weight.clone());
        let out = empty_like(&x);
        // SAFETY: one cube per row of `cols` elements; `weight` holds `cols`.
        unsafe {
            kernels::rms_norm::launch_unchecked(
                &x.client,
                CubeCount::Static(rows as u32, 1, 1),
                CubeDim::new_1d(UNITS as u32),
                x.clone().into_array_arg(),
                weight.into_array_arg(),
                out.clone().into_array_arg(),
                cols,
                norm.eps as f32,
                UNITS,
            );
        }
        Ok(tensor(out))
    }

    fn linear(
        &self,
        x: Tensor<Cube<R, F, I, BT>, 2>,
        weight: &Linear<Cube<R, F, I, BT>>,
    ) -> Result<Tensor<Cube<R, F, I, BT>, 2>> {
        weight.forward(x)
    }

    fn rope(
        &self,
        x: Tensor<Cube<R, F, I, BT>, 2>,
        heads: usize,
        rope: &Rope<Cube<R, F, I, BT>>,
        batch: &[SeqSpan],
    ) -> Result<Tensor<Cube<R, F, I, BT>, 2>> {
        let [_, width] = x.dims();
        let positions: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.positions())
            .map(|p| p as u32)
            .collect();
        if positions.iter().any(|&p| p as usize >= rope.positions()) {
            return Err(ModelError::ContextOverflow {
                needed: positions.iter().max().map_or(0, |&p| p as usize + 1),
                limit: rope.positions(),
                reason: "the RoPE tables' positions",
            });
        }
        let (cos, sin) = rope.tables();
        let (cos, sin) = (f32_cube(cos), f32_cube(sin));
        let x = f32_cube(x);
        let out = empty_like(&x);
        let positions = upload_u32(&x.client, &positions);
        let elements = out.meta.num_elements();
        // SAFETY: one unit per element of `out` (the kernel checks the bound); every
        // position indexes within the tables (checked above).
        unsafe {
            kernels::rope::launch_unchecked(
                &x.client,
                elementwise_count(elements),
                CubeDim::new_1d(ELEMENTWISE_UNITS),
                x.clone().into_array_arg(),
                cos.into_array_arg(),
                sin.into_array_arg(),
                positions,
                out.clone().into_array_arg(),
                width,
                width / heads,
            );
        }
        Ok(tensor(out))
    }

    fn attention(
        &self,
        q: Tensor<Cube<R, F, I, BT>, 2>,
        k: Tensor<Cube<R, F, I, BT>, 2>,
        v: Tensor<Cube<R, F, I, BT>, 2>,
        heads: Heads,
        batch: &mut [LayerSeq<'_, Cube<R, F, I, BT>>],
    ) -> Result<Tensor<Cube<R, F, I, BT>, 2>> {
        let d = heads.head_dim;
        let q = f32_cube(q);
        let out = empty_like(&q);
        for seq in batch.iter_mut() {
            let (rows, n) = (seq.span.rows.clone(), seq.span.len());
            let split = |t: &Tensor<Cube<R, F, I, BT>, 2>| {
                t.clone()
                    .slice([rows.clone(), 0..heads.kv_heads * d])
                    .reshape([1, n, heads.kv_heads, d])
                    .swap_dims(1, 2)
            };
            crate::ops::reference::append(seq.cache, split(&k), split(&v), seq.span.start)?;
            let LayerCache::Tensors {
                keys: Some(keys),
                values: Some(values),
                ..
            } = &*seq.cache
            else {
                return Err(ModelError::CacheMismatch(
                    "the cube kernels need a device cache".into(),
                ));
            };
            let sequence = AttentionSeq {
                row0: rows.start,
                rows: n,
                start: seq.span.start,
                heads,
                capacity: keys.dims()[2],
            };
            let (keys, values) = (f32_cube(keys.clone()), f32_cube(values.clone()));
            // Decode steps split the positions over cubes (flash-decoding), and so does a
            // cache longer than one cube's scores; a prefill has a cube per query row.
            let long = seq.span.start + n > ATTENTION_MAX_LEN;
            if n <= GEMV_MAX_ROWS || long {
                attention_split(&q, keys, values, &out, &sequence);
            } else {
                attention_rows(&q, keys, values, &out, &sequence);
            }
        }
        Ok(tensor(out))
    }

    fn swiglu(
        &self,
        gate: Tensor<Cube<R, F, I, BT>, 2>,
        up: Tensor<Cube<R, F, I, BT>, 2>,
    ) -> Result<Tensor<Cube<R, F, I, BT>, 2>> {
        let (gate, up) = (f32_cube(gate), f32_cube(up));
        let out = empty_like(&gate);
        let elements = out.meta.num_elements();
        // SAFETY: one unit per element (bounds checked in the kernel); same shapes.
        unsafe {
            kernels::swiglu::launch_unchecked(
                &gate.client,
                elementwise_count(elements),
                CubeDim::new_1d(ELEMENTWISE_UNITS),
                gate.clone().into_array_arg(),
                up.into_array_arg(),
                out.clone().into_array_arg(),
            );
        }
        Ok(tensor(out))
    }

    fn moe(
        &self,
        x: Tensor<Cube<R, F, I, BT>, 2>,
        router: &Linear<Cube<R, F, I, BT>>,
        experts: &[Mlp<Cube<R, F, I, BT>>],
        top_k: usize,
    ) -> Result<Tensor<Cube<R, F, I, BT>, 2>> {
        match DeviceExperts::of(&x, experts, top_k) {
            Some(device) => device.forward(self.linear(x.clone(), router)?, x),
            None => sparse_moe(self, x, router, experts, top_k),
        }
    }

    fn lm_head(
        &self,
        x: Tensor<Cube<R, F, I, BT>, 2>,
        head: &Linear<Cube<R, F, I, BT>>,
    ) -> Result<Tensor<Cube<R, F, I, BT>, 2>> {
        Ok(head.forward(x)?.cast(FloatDType::F32))
    }
}

/// A dense weight on a cubecl backend: a few activation rows run the GEMV kernel, more the
/// GEMM kernel ([`DenseWeight`]'s burn matmul only for activations that are not f32).
#[derive(Debug)]
struct GemvWeight<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> {
    weight: Tensor<Cube<R, F, I, BT>, 2>,
}

impl<R, F, I, BT> GemvWeight<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    /// The same tensor behind burn's ops (shares the device memory).
    fn burn_weight(&self) -> DenseWeight<Cube<R, F, I, BT>> {
        DenseWeight::new(self.weight.clone())
    }
}

impl<R, F, I, BT> Weight<Cube<R, F, I, BT>> for GemvWeight<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn shape(&self) -> [usize; 2] {
        self.weight.dims()
    }

    fn forward(&self, x: Tensor<Cube<R, F, I, BT>, 2>) -> Result<Tensor<Cube<R, F, I, BT>, 2>> {
        let [rows, k] = x.dims();
        let [out, _] = self.weight.dims();
        if x.dtype() != DType::F32 {
            return self.burn_weight().forward(x);
        }
        let (x, w) = (
            f32_cube(x),
            into_contiguous(self.weight.clone().into_primitive().tensor()),
        );
        Ok(tensor(if rows <= GEMV_MAX_ROWS && k % VECTOR == 0 {
            gemv(x, w, rows, out, k)
        } else {
            gemm(x, w, rows, out, k)
        }))
    }

    fn rows(
        &self,
        ids: &[u32],
        dtype: ComputeDtype,
        device: &<Cube<R, F, I, BT> as burn::tensor::backend::BackendTypes>::Device,
    ) -> Result<Tensor<Cube<R, F, I, BT>, 2>> {
        self.burn_weight().rows(ids, dtype, device)
    }

    fn dense(&self) -> Option<&Tensor<Cube<R, F, I, BT>, 2>> {
        Some(&self.weight)
    }
}

/// `x @ w.T` by the GEMV kernel: `x` `[rows, k]` f32, `w` `[out, k]` contiguous.
fn gemv<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    rows: usize,
    out: usize,
    k: usize,
) -> CubeTensor<R> {
    let y = empty_f32(&x, [rows, out]);
    let dtype = w.dtype;
    // SAFETY: cubes cover (feature, row) for every feature < out (the kernel drops the
    // rest) and row < rows; each reads row `feature` of `w` and row `row` of `x`, both of
    // k / VECTOR vectors, and writes one element of `y` ([rows, out]).
    unsafe {
        kernels::gemv::launch_unchecked(
            &x.client,
            feature_grid(out, rows),
            CubeDim::new_1d(UNITS as u32),
            VECTOR,
            x.clone().into_array_arg(),
            w.into_array_arg(),
            y.clone().into_array_arg(),
            k / VECTOR,
            out,
            UNITS,
            dtype.into(),
        );
    }
    y
}

/// One sequence's attention launch: its rows in the packed batch, its first position, the
/// heads and the cache's capacity.
struct AttentionSeq {
    row0: usize,
    rows: usize,
    start: usize,
    heads: Heads,
    capacity: usize,
}

impl AttentionSeq {
    fn scale(&self) -> f32 {
        1.0 / (self.heads.head_dim as f32).sqrt()
    }
}

/// Causal attention of `seq`'s rows of `q` into `out`, one cube per (head, query row), at
/// most [`ATTENTION_MAX_LEN`] positions.
fn attention_rows<R: CubeRuntime>(
    q: &CubeTensor<R>,
    keys: CubeTensor<R>,
    values: CubeTensor<R>,
    out: &CubeTensor<R>,
    seq: &AttentionSeq,
) {
    let h = seq.heads;
    // SAFETY: one cube per (head, row of this sequence); rows `row0..row0 + rows` of `q`
    // and `out` exist, positions `..start + rows` lie within the cache's capacity (the
    // caller wrote them), and at most ATTENTION_MAX_LEN (the caller checked).
    unsafe {
        kernels::attention::launch_unchecked(
            &q.client,
            CubeCount::Static(h.heads as u32, seq.rows as u32, 1),
            CubeDim::new_1d(UNITS as u32),
            q.clone().into_array_arg(),
            keys.into_array_arg(),
            values.into_array_arg(),
            out.clone().into_array_arg(),
            seq.row0,
            seq.start,
            h.heads,
            h.heads / h.kv_heads,
            h.head_dim,
            seq.capacity,
            seq.scale(),
            UNITS,
            ATTENTION_MAX_LEN,
        );
    }
}

/// Causal attention of `seq`'s rows of `q` into `out`, split over chunks of
/// [`kernels::ATTENTION_CHUNK`] positions (flash-decoding): partial results per chunk,
/// then one pass combining them. Any length; memory `rows × heads × chunks × head_dim`.
fn attention_split<R: CubeRuntime>(
    q: &CubeTensor<R>,
    keys: CubeTensor<R>,
    values: CubeTensor<R>,
    out: &CubeTensor<R>,
    seq: &AttentionSeq,
) {
    let h = seq.heads;
    let chunks = (seq.start + seq.rows).div_ceil(kernels::ATTENTION_CHUNK);
    let slots = seq.rows * h.heads * chunks;
    let maxes = empty_f32(q, [slots, 1]);
    let sums = empty_f32(q, [slots, 1]);
    let partial = empty_f32(q, [slots, h.head_dim]);
    // SAFETY: one cube per (head, row of this sequence, chunk); rows `row0..row0 + rows`
    // of `q` exist, positions `..start + rows` lie within the cache's capacity (the caller
    // wrote them); the partial buffers hold `rows × heads × chunks` slots.
    unsafe {
        kernels::attention_partial::launch_unchecked(
            &q.client,
            CubeCount::Static(h.heads as u32, seq.rows as u32, chunks as u32),
            CubeDim::new_1d(UNITS as u32),
            q.clone().into_array_arg(),
            keys.into_array_arg(),
            values.into_array_arg(),
            maxes.clone().into_array_arg(),
            sums.clone().into_array_arg(),
            partial.clone().into_array_arg(),
            seq.row0,
            seq.start,
            h.heads,
            h.heads / h.kv_heads,
            h.head_dim,
            seq.capacity,
            seq.scale(),
            UNITS,
        );
    }
    // SAFETY: one cube per (head, row); it reads the chunks the first pass wrote for its
    // row (those before the row's length) and writes its row of `out`.
    unsafe {
        kernels::attention_combine::launch_unchecked(
            &q.client,
            CubeCount::Static(h.heads as u32, seq.rows as u32, 1),
            CubeDim::new_1d(UNITS as u32),
            maxes.into_array_arg(),
            sums.into_array_arg(),
            partial.into_array_arg(),
            out.clone().into_array_arg(),
            seq.row0,
            seq.start,
            h.heads,
            h.head_dim,
            chunks,
        );
    }
}

/// A decode step's experts as the device MoE kernels take them: f32 activations of at
/// most [`GEMV_MAX_ROWS`] rows, and every expert a plain float weight of one dtype.
struct DeviceExperts<R: CubeRuntime> {
    /// `(gate, up, down)` of each expert, contiguous.
    experts: Vec<[CubeTensor<R>; 3]>,
    top_k: usize,
}

impl<R: CubeRuntime> DeviceExperts<R> {
    /// The experts if this step can run on the device: otherwise (a prefill, quantized or
    /// mixed-dtype experts, too many experts, widths not in whole vectors) `None`.
    fn of<F, I, BT>(
        x: &Tensor<Cube<R, F, I, BT>, 2>,
        experts: &[Mlp<Cube<R, F, I, BT>>],
        top_k: usize,
    ) -> Option<Self>
    where
        F: FloatElement,
        I: IntElement,
        BT: BoolElement,
    {
        let [rows, hidden] = x.dims();
        let fits = rows <= GEMV_MAX_ROWS
            && x.dtype() == DType::F32
            && (1..=DEVICE_MOE_MAX_EXPERTS).contains(&experts.len())
            && (1..=experts.len()).contains(&top_k)
            && hidden % VECTOR == 0;
        if !fits {
            return None;
        }
        let first = experts[0].gate.dense()?.dtype();
        let mut tensors = Vec::with_capacity(experts.len());
        for mlp in experts {
            let [gate, up, down] = [&mlp.gate, &mlp.up, &mlp.down].map(|l| l.dense().cloned());
            let [gate, up, down] = [gate?, up?, down?];
            let [inter, _] = gate.dims();
            let shapes_fit = up.dims() == gate.dims()
                && down.dims() == [hidden, inter]
                && gate.dims()[1] == hidden
                && inter % VECTOR == 0;
            let same_dtype = [&gate, &up, &down].iter().all(|t| t.dtype() == first);
            if !shapes_fit || !same_dtype {
                return None;
            }
            tensors.push([gate, up, down].map(|t| into_contiguous(t.into_primitive().tensor())));
        }
        Some(Self {
            experts: tensors,
            top_k,
        })
    }

    /// The block's output for `x` given its router `logits` (`[rows, experts]`): routing,
    /// then each expert in order on the rows that chose it (the others' cubes return at
    /// once), its output scaled and added — no host synchronisation.
    fn forward<F, I, BT>(
        &self,
        logits: Tensor<Cube<R, F, I, BT>, 2>,
        x: Tensor<Cube<R, F, I, BT>, 2>,
    ) -> Result<Tensor<Cube<R, F, I, BT>, 2>>
    where
        F: FloatElement,
        I: IntElement,
        BT: BoolElement,
    {
        let [rows, hidden] = x.dims();
        let (logits, x) = (f32_cube(logits), f32_cube(x));
        let experts = self.experts.len();
        let top_k = self.top_k;
        let chosen = empty_device_dtype(
            x.client.clone(),
            x.device.clone(),
            [rows, top_k].into(),
            DType::U32,
        );
        let weights = empty_f32(&x, [rows, top_k]);
        // SAFETY: one unit per row (the kernel drops the rest); `logits` holds `rows ×
        // experts` values, `chosen` and `weights` `rows × top_k`; experts ≤ 32 (checked).
        unsafe {
            kernels::moe_route::launch_unchecked(
                &x.client,
                elementwise_count(rows),
                CubeDim::new_1d(ELEMENTWISE_UNITS),
                logits.into_array_arg(),
                chosen.clone().into_array_arg(),
                weights.clone().into_array_arg(),
                rows,
                experts,
                top_k,
            );
        }
        let out = zeros_client(
            x.client.clone(),
            x.device.clone(),
            [rows, hidden].into(),
            DType::F32,
        );
        let inter = self.experts[0][0].meta.shape()[0];
        let h = empty_f32(&x, [rows, inter]);
        for (e, [gate, up, down]) in self.experts.iter().enumerate() {
            let dtype = gate.dtype;
            // SAFETY: cubes cover (feature, row) for every feature < inter and row < rows;
            // gate and up are [inter, hidden], x [rows, hidden], h [rows, inter], chosen
            // [rows, top_k]; widths are whole vectors (checked in `of`).
            unsafe {
                kernels::moe_gate_up::launch_unchecked(
                    &x.client,
                    feature_grid(inter, rows),
                    CubeDim::new_1d(UNITS as u32),
                    VECTOR,
                    x.clone().into_array_arg(),
                    gate.clone().into_array_arg(),
                    up.clone().into_array_arg(),
                    chosen.clone().into_array_arg(),
                    h.clone().into_array_arg(),
                    e as u32,
                    top_k,
                    hidden / VECTOR,
                    inter,
                    UNITS,
                    dtype.into(),
                );
            }
            // SAFETY: as above with down [hidden, inter], h the input, out [rows, hidden].
            unsafe {
                kernels::moe_down::launch_unchecked(
                    &x.client,
                    feature_grid(hidden, rows),
                    CubeDim::new_1d(UNITS as u32),
                    VECTOR,
                    h.clone().into_array_arg(),
                    down.clone().into_array_arg(),
                    chosen.clone().into_array_arg(),
                    weights.clone().into_array_arg(),
                    out.clone().into_array_arg(),
                    e as u32,
                    top_k,
                    inter / VECTOR,
                    hidden,
                    UNITS,
                    dtype.into(),
                );
            }
        }
        Ok(tensor(out))
    }
}

/// An uninitialised tensor of `t`'s shape and dtype on its device.
fn empty_like<R: CubeRuntime>(t: &CubeTensor<R>) -> CubeTensor<R> {
    empty_device_dtype(t.client.clone(), t.device.clone(), t.shape(), t.dtype)
}
