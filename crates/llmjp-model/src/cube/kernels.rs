//! The `#[cube]` kernels of decoding, generic over the cubecl runtime (CUDA, Vulkan, …).
//!
//! Activations, norms, RoPE tables and the KV cache are f32; only linear weights come in
//! their own float type `W` (bf16 on a GPU, f16 or f32 where bf16 is not supported), read
//! once, in vectors, and accumulated in f32. Every kernel takes its sizes as runtime
//! arguments: the set compiled does not grow with the prompt or the output length.

// The `#[cube]` macro generates launch modules and types without docs.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// The sum of `value` over the cube's units (a shared-memory tree; every unit gets it).
/// `shared` holds one f32 per unit; the cube's size must be a power of two.
#[cube]
pub(super) fn cube_sum(value: f32, shared: &mut SharedMemory<f32>) -> f32 {
    let unit = UNIT_POS as usize;
    shared[unit] = value;
    sync_cube();
    let mut stride = CUBE_DIM as usize / 2;
    while stride > 0 {
        if unit < stride {
            shared[unit] = shared[unit] + shared[unit + stride];
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// The maximum of `value` over the cube's units (as `cube_sum`).
#[cube]
fn cube_max(value: f32, shared: &mut SharedMemory<f32>) -> f32 {
    let unit = UNIT_POS as usize;
    shared[unit] = value;
    sync_cube();
    let mut stride = CUBE_DIM as usize / 2;
    while stride > 0 {
        if unit < stride {
            shared[unit] = f32::max(shared[unit], shared[unit + stride]);
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// The dot product of the `k_vectors` vectors of `x` from `x_start` and of `w` from
/// `w_start`: the cube's units stride over them, weights converted to f32, then sum in
/// shared memory (every unit gets the total).
#[cube]
fn cube_dot<W: Float, N: Size>(
    x: &Array<Vector<f32, N>>,
    w: &Array<Vector<W, N>>,
    x_start: usize,
    w_start: usize,
    k_vectors: usize,
    shared: &mut SharedMemory<f32>,
) -> f32 {
    let mut acc = Vector::<f32, N>::new(0.0);
    let mut i = UNIT_POS as usize;
    while i < k_vectors {
        acc += Vector::<f32, N>::cast_from(w[w_start + i]) * x[x_start + i];
        i += CUBE_DIM as usize;
    }
    let mut partial = 0.0f32;
    #[unroll]
    for lane in 0..N::value() {
        partial += acc[lane];
    }
    cube_sum(partial, shared)
}

/// `y = x @ w.T` for a few activation rows: one cube per (output feature, row), its units
/// striding over the input features in vectors of `N`, then summing in shared memory.
///
/// `x`: `[rows, k]` f32; `w`: `[out, k]` in `W`; `y`: `[rows, out]` f32; `k_vectors` =
/// k / N. The cube count is `(gx, gy, rows)` with `gx * gy >= out` (grid limits).
#[cube(launch_unchecked)]
pub fn gemv<W: Float, N: Size>(
    x: &Array<Vector<f32, N>>,
    w: &Array<Vector<W, N>>,
    y: &mut Array<f32>,
    k_vectors: usize,
    out_features: usize,
    #[comptime] units: usize,
    #[define(W)] _weights: StorageType,
) {
    let feature = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize;
    if feature >= out_features {
        terminate!();
    }
    let row = CUBE_POS_Z as usize;
    let mut shared = SharedMemory::<f32>::new(units);
    let total = cube_dot(
        x,
        w,
        row * k_vectors,
        feature * k_vectors,
        k_vectors,
        &mut shared,
    );
    if UNIT_POS == 0 {
        y[row * out_features + feature] = total;
    }
}

/// Rows of a `gemm` tile.
pub const GEMM_ROWS: usize = 32;
/// Output features of a `gemm` tile.
pub const GEMM_FEATURES: usize = 64;
/// Inputs per step of a `gemm` tile.
pub const GEMM_DEPTH: usize = 16;

/// `y = x @ w.T` for many activation rows (a prefill): tiles of `GEMM_ROWS` ×
/// `GEMM_FEATURES` per cube of 16 × 16 units, each unit computing 2 rows × 4 features,
/// the inputs staged in shared memory `GEMM_DEPTH` at a time, weights converted to f32
/// as they are staged, f32 accumulation (no tensor cores: exact f32 products, as the CPU).
///
/// `x`: `[rows, k]` f32; `w`: `[out, k]` in `W`; `y`: `[rows, out]` f32. The cube count
/// is `(out / GEMM_FEATURES, rows / GEMM_ROWS)`, rounded up; the cube dim `(16, 16)`.
#[cube(launch_unchecked)]
pub fn gemm<W: Float>(
    x: &Array<f32>,
    w: &Array<W>,
    y: &mut Array<f32>,
    rows: usize,
    k: usize,
    out_features: usize,
    #[define(W)] _weights: StorageType,
) {
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let unit = UNIT_POS as usize;
    let row0 = CUBE_POS_Y as usize * GEMM_ROWS;
    let feature0 = CUBE_POS_X as usize * GEMM_FEATURES;
    let mut xs = SharedMemory::<f32>::new(GEMM_ROWS * GEMM_DEPTH);
    let mut ws = SharedMemory::<f32>::new(GEMM_DEPTH * GEMM_FEATURES);

    let mut a00 = 0.0f32;
    let mut a01 = 0.0f32;
    let mut a02 = 0.0f32;
    let mut a03 = 0.0f32;
    let mut a10 = 0.0f32;
    let mut a11 = 0.0f32;
    let mut a12 = 0.0f32;
    let mut a13 = 0.0f32;

    let mut k0 = 0usize;
    while k0 < k {
        // Stage x: 32 × 16 values, two per unit; w: 64 × 16, four per unit, transposed.
        #[unroll]
        for i in 0..2usize {
            let e = unit + i * 256usize;
            let (r, c) = (e / GEMM_DEPTH, e % GEMM_DEPTH);
            let mut v = 0.0f32;
            if row0 + r < rows && k0 + c < k {
                v = x[(row0 + r) * k + k0 + c];
            }
            xs[r * GEMM_DEPTH + c] = v;
        }
        #[unroll]
        for i in 0..4usize {
            let e = unit + i * 256usize;
            let (f, c) = (e / GEMM_DEPTH, e % GEMM_DEPTH);
            let mut v = 0.0f32;
            if feature0 + f < out_features && k0 + c < k {
                v = f32::cast_from(w[(feature0 + f) * k + k0 + c]);
            }
            ws[c * GEMM_FEATURES + f] = v;
        }
        sync_cube();
        #[unroll]
        for kk in 0..GEMM_DEPTH {
            let x0 = xs[(ty * 2) * GEMM_DEPTH + kk];
            let x1 = xs[(ty * 2 + 1) * GEMM_DEPTH + kk];
            let wb = kk * GEMM_FEATURES + tx * 4;
            let (w0, w1, w2, w3) = (ws[wb], ws[wb + 1], ws[wb + 2], ws[wb + 3]);
            a00 += x0 * w0;
            a01 += x0 * w1;
            a02 += x0 * w2;
            a03 += x0 * w3;
            a10 += x1 * w0;
            a11 += x1 * w1;
            a12 += x1 * w2;
            a13 += x1 * w3;
        }
        sync_cube();
        k0 += GEMM_DEPTH;
    }

    let r = row0 + ty * 2;
    let f = feature0 + tx * 4;
    if r < rows {
        let base = r * out_features;
        if f < out_features {
            y[base + f] = a00;
        }
        if f + 1 < out_features {
            y[base + f + 1] = a01;
        }
        if f + 2 < out_features {
            y[base + f + 2] = a02;
        }
        if f + 3 < out_features {
            y[base + f + 3] = a03;
        }
    }
    if r + 1 < rows {
        let base = (r + 1) * out_features;
        if f < out_features {
            y[base + f] = a10;
        }
        if f + 1 < out_features {
            y[base + f + 1] = a11;
        }
        if f + 2 < out_features {
            y[base + f + 2] = a12;
        }
        if f + 3 < out_features {
            y[base + f + 3] = a13;
        }
    }
}

/// RMSNorm of each row (one cube per row): `x / sqrt(mean(x²) + eps) * weight`, as the
/// reference computes it in f32.
#[cube(launch_unchecked)]
pub fn rms_norm(
    x: &Array<f32>,
    weight: &Array<f32>,
    out: &mut Array<f32>,
    cols: usize,
    eps: f32,
    #[comptime] units: usize,
) {
    let start = CUBE_POS_X as usize * cols;
    let mut squares = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < cols {
        let v = x[start + i];
        squares += v * v;
        i += CUBE_DIM as usize;
    }
    let mut shared = SharedMemory::<f32>::new(units);
    let total = cube_sum(squares, &mut shared);
    let inverse = 1.0f32 / f32::sqrt(total / f32::cast_from(cols) + eps);
    let mut i = UNIT_POS as usize;
    while i < cols {
        out[start + i] = x[start + i] * inverse * weight[i];
        i += CUBE_DIM as usize;
    }
}

/// SwiGLU's activation, element-wise: `silu(gate) * up`.
#[cube(launch_unchecked)]
pub fn swiglu(gate: &Array<f32>, up: &Array<f32>, out: &mut Array<f32>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let g = gate[i];
        out[i] = g / (1.0f32 + f32::exp(-g)) * up[i];
    }
}

/// Rotate-half RoPE of `x` (`[rows, heads * head_dim]`), each row at `positions[row]`, with
/// `[positions, head_dim]` cos/sin tables: `x * cos + rotate_half(x) * sin`.
#[cube(launch_unchecked)]
pub fn rope(
    x: &Array<f32>,
    cos: &Array<f32>,
    sin: &Array<f32>,
    positions: &Array<u32>,
    out: &mut Array<f32>,
    width: usize,
    head_dim: usize,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let row = i / width;
        let j = (i % width) % head_dim;
        let half = head_dim / 2;
        let table = positions[row] as usize * head_dim + j;
        let rotated = if j < half { -x[i + half] } else { x[i - half] };
        out[i] = x[i] * cos[table] + rotated * sin[table];
    }
}

/// This unit's share of the scaled scores `q · k` of positions `first..end` (strided over
/// the cube's units), kept in `scores[p - first]`; returns the largest of them.
#[cube]
#[allow(clippy::too_many_arguments)]
fn unit_scores(
    q: &Array<f32>,
    keys: &Array<f32>,
    q_start: usize,
    cache_start: usize,
    first: usize,
    end: usize,
    head_dim: usize,
    scale: f32,
    scores: &mut SharedMemory<f32>,
) -> f32 {
    let mut local_max = f32::new(-3.0e38);
    let mut p = first + UNIT_POS as usize;
    while p < end {
        let k_start = cache_start + p * head_dim;
        let mut dot = 0.0f32;
        for j in 0..head_dim {
            dot += q[q_start + j] * keys[k_start + j];
        }
        let score = dot * scale;
        scores[p - first] = score;
        local_max = f32::max(local_max, score);
        p += CUBE_DIM as usize;
    }
    local_max
}

/// Replaces this unit's scores (as `unit_scores` strided them) by `exp(score - max)`;
/// returns their sum.
#[cube]
fn unit_exps(scores: &mut SharedMemory<f32>, first: usize, end: usize, max: f32) -> f32 {
    let mut local_sum = 0.0f32;
    let mut p = first + UNIT_POS as usize;
    while p < end {
        let e = f32::exp(scores[p - first] - max);
        scores[p - first] = e;
        local_sum += e;
        p += CUBE_DIM as usize;
    }
    local_sum
}

/// Element `j` of the values of positions `first..end` weighted by `scores` (unnormalised).
#[cube]
fn weighted_value(
    scores: &SharedMemory<f32>,
    values: &Array<f32>,
    cache_start: usize,
    first: usize,
    end: usize,
    head_dim: usize,
    j: usize,
) -> f32 {
    let mut acc = 0.0f32;
    for p in first..end {
        acc += scores[p - first] * values[cache_start + p * head_dim + j];
    }
    acc
}

/// Causal attention of one sequence's query rows over its cache: one cube per (head, query
/// row). Row `r` stands at position `start + r` and sees positions `0..=start + r`.
///
/// `q`, `out`: `[rows, heads * head_dim]` (the sequence's rows begin at `row0`); `keys`,
/// `values`: `[kv_heads, capacity, head_dim]`. Scores and softmax in f32; at most
/// `max_len` positions (the shared memory holding the scores).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &Array<f32>,
    keys: &Array<f32>,
    values: &Array<f32>,
    out: &mut Array<f32>,
    row0: usize,
    start: usize,
    heads: usize,
    groups: usize,
    head_dim: usize,
    capacity: usize,
    scale: f32,
    #[comptime] units: usize,
    #[comptime] max_len: usize,
) {
    let head = CUBE_POS_X as usize;
    let r = CUBE_POS_Y as usize;
    let len = start + r + 1;
    let q_start = (row0 + r) * heads * head_dim + head * head_dim;
    let cache_start = (head / groups) * capacity * head_dim;
    let unit = UNIT_POS as usize;
    let step = CUBE_DIM as usize;

    let mut scores = SharedMemory::<f32>::new(max_len);
    let mut shared = SharedMemory::<f32>::new(units);

    let local_max = unit_scores(
        q,
        keys,
        q_start,
        cache_start,
        0,
        len,
        head_dim,
        scale,
        &mut scores,
    );
    let max = cube_max(local_max, &mut shared);
    let local_sum = unit_exps(&mut scores, 0, len, max);
    // The sum's barriers also make every score visible to every unit.
    let sum = cube_sum(local_sum, &mut shared);

    let mut j = unit;
    while j < head_dim {
        out[q_start + j] = weighted_value(&scores, values, cache_start, 0, len, head_dim, j) / sum;
        j += step;
    }
}

/// Positions per cube of `attention_partial` (the scores it holds in shared memory).
pub const ATTENTION_CHUNK: usize = 256;

/// Split-K (flash-decoding) attention, first pass: one cube per (head, query row, chunk
/// of `ATTENTION_CHUNK` positions) computes its chunk's scores, their maximum `m`, the sum
/// of `exp(score - m)` and the values weighted by those, unnormalised. Chunks past a row's
/// length do nothing (`attention_combine` reads only the row's own).
///
/// `q`: `[rows, heads * head_dim]` (the sequence's rows begin at `row0`); `keys`,
/// `values`: `[kv_heads, capacity, head_dim]`; `maxes`, `sums`: `[n, heads, chunks]`;
/// `partial`: `[n, heads, chunks, head_dim]`, for the sequence's `n` rows. The cube count
/// is `(heads, n, chunks)`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn attention_partial(
    q: &Array<f32>,
    keys: &Array<f32>,
    values: &Array<f32>,
    maxes: &mut Array<f32>,
    sums: &mut Array<f32>,
    partial: &mut Array<f32>,
    row0: usize,
    start: usize,
    heads: usize,
    groups: usize,
    head_dim: usize,
    capacity: usize,
    scale: f32,
    #[comptime] units: usize,
) {
    let head = CUBE_POS_X as usize;
    let r = CUBE_POS_Y as usize;
    let chunk = CUBE_POS_Z as usize;
    let chunks = CUBE_COUNT_Z as usize;
    let len = start + r + 1;
    let first = chunk * ATTENTION_CHUNK;
    if first >= len {
        terminate!();
    }
    let mut end = first + ATTENTION_CHUNK;
    if end > len {
        end = len;
    }
    let q_start = (row0 + r) * heads * head_dim + head * head_dim;
    let cache_start = (head / groups) * capacity * head_dim;
    let slot = (r * heads + head) * chunks + chunk;
    let unit = UNIT_POS as usize;
    let step = CUBE_DIM as usize;

    let mut scores = SharedMemory::<f32>::new(ATTENTION_CHUNK);
    let mut shared = SharedMemory::<f32>::new(units);

    let local_max = unit_scores(
        q,
        keys,
        q_start,
        cache_start,
        first,
        end,
        head_dim,
        scale,
        &mut scores,
    );
    let max = cube_max(local_max, &mut shared);
    let local_sum = unit_exps(&mut scores, first, end, max);
    // The sum's barriers also make every score visible to every unit.
    let sum = cube_sum(local_sum, &mut shared);
    if unit == 0 {
        maxes[slot] = max;
        sums[slot] = sum;
    }

    let mut j = unit;
    while j < head_dim {
        partial[slot * head_dim + j] =
            weighted_value(&scores, values, cache_start, first, end, head_dim, j);
        j += step;
    }
}

/// Split-K attention, second pass: one cube per (head, query row) rescales its chunks'
/// partial results to their common maximum and normalises: the softmax-weighted values.
/// Shapes as `attention_partial`; the cube count is `(heads, n)`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn attention_combine(
    maxes: &Array<f32>,
    sums: &Array<f32>,
    partial: &Array<f32>,
    out: &mut Array<f32>,
    row0: usize,
    start: usize,
    heads: usize,
    head_dim: usize,
    chunks: usize,
) {
    let head = CUBE_POS_X as usize;
    let r = CUBE_POS_Y as usize;
    let len = start + r + 1;
    // Chunks holding the row's positions (len ≥ 1).
    let used = (len - 1) / ATTENTION_CHUNK + 1;
    let base = (r * heads + head) * chunks;

    let mut max = f32::new(-3.0e38);
    for c in 0..used {
        max = f32::max(max, maxes[base + c]);
    }
    let mut sum = 0.0f32;
    for c in 0..used {
        sum += sums[base + c] * f32::exp(maxes[base + c] - max);
    }
    let out_start = (row0 + r) * heads * head_dim + head * head_dim;
    let mut j = UNIT_POS as usize;
    while j < head_dim {
        let mut acc = 0.0f32;
        for c in 0..used {
            acc += partial[(base + c) * head_dim + j] * f32::exp(maxes[base + c] - max);
        }
        out[out_start + j] = acc / sum;
        j += CUBE_DIM as usize;
    }
}

/// Mixture-of-experts routing on the device, one unit per row: a softmax over the row's
/// router logits in f32, the `top_k` most probable experts (ties to the lower index),
/// their probabilities renormalised to sum to one — as the host's `moe::route`. At most
/// 32 experts (a bit mask tracks the chosen).
///
/// `logits`: `[rows, experts]`; `chosen` (expert indices), `weights`: `[rows, top_k]`.
#[cube(launch_unchecked)]
pub fn moe_route(
    logits: &Array<f32>,
    chosen: &mut Array<u32>,
    weights: &mut Array<f32>,
    rows: usize,
    experts: usize,
    top_k: usize,
) {
    let row = ABSOLUTE_POS;
    if row < rows {
        let base = row * experts;
        let mut max = f32::new(-3.0e38);
        for e in 0..experts {
            max = f32::max(max, logits[base + e]);
        }
        let mut sum = 0.0f32;
        for e in 0..experts {
            sum += f32::exp(logits[base + e] - max);
        }
        let mut taken = 0u32;
        let mut total = 0.0f32;
        for slot in 0..top_k {
            // The most probable expert not yet taken; the first on a tie.
            let mut best = 0usize;
            let mut best_p = f32::new(-1.0);
            for e in 0..experts {
                let p = f32::exp(logits[base + e] - max) / sum;
                let free = (taken >> e as u32) & 1u32 == 0u32;
                if free && p > best_p {
                    best = e;
                    best_p = p;
                }
            }
            taken |= 1u32 << best as u32;
            chosen[row * top_k + slot] = best as u32;
            weights[row * top_k + slot] = best_p;
            total += best_p;
        }
        for slot in 0..top_k {
            weights[row * top_k + slot] = weights[row * top_k + slot] / total;
        }
    }
}

/// The slot of `expert` among `row`'s chosen experts, or `top_k` if the row did not
/// choose it.
#[cube]
fn moe_slot(chosen: &Array<u32>, row: usize, top_k: usize, expert: u32) -> usize {
    let mut slot = top_k;
    for s in 0..top_k {
        if chosen[row * top_k + s] == expert {
            slot = s;
        }
    }
    slot
}

/// One expert's SwiGLU input half for the rows that chose it: `h = silu(x @ gate.T) *
/// (x @ up.T)`, each dot as `gemv` computes it; cubes of rows that did not choose
/// `expert` return at once (its weights are read only for rows that use it).
///
/// `x`: `[rows, k]` f32; `gate`, `up`: `[out, k]` in `W`; `h`: `[rows, out]` f32;
/// `chosen`: `[rows, top_k]`. The cube count is `(gx, gy, rows)` with `gx * gy >= out`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn moe_gate_up<W: Float, N: Size>(
    x: &Array<Vector<f32, N>>,
    gate: &Array<Vector<W, N>>,
    up: &Array<Vector<W, N>>,
    chosen: &Array<u32>,
    h: &mut Array<f32>,
    expert: u32,
    top_k: usize,
    k_vectors: usize,
    out_features: usize,
    #[comptime] units: usize,
    #[define(W)] _weights: StorageType,
) {
    let feature = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize;
    let row = CUBE_POS_Z as usize;
    if feature >= out_features || moe_slot(chosen, row, top_k, expert) == top_k {
        terminate!();
    }
    let w_start = feature * k_vectors;
    let x_start = row * k_vectors;
    let mut g = Vector::<f32, N>::new(0.0);
    let mut u = Vector::<f32, N>::new(0.0);
    let mut i = UNIT_POS as usize;
    while i < k_vectors {
        let xv = x[x_start + i];
        g += Vector::<f32, N>::cast_from(gate[w_start + i]) * xv;
        u += Vector::<f32, N>::cast_from(up[w_start + i]) * xv;
        i += CUBE_DIM as usize;
    }
    let mut g_partial = 0.0f32;
    let mut u_partial = 0.0f32;
    #[unroll]
    for lane in 0..N::value() {
        g_partial += g[lane];
        u_partial += u[lane];
    }
    let mut shared = SharedMemory::<f32>::new(units);
    let g_total = cube_sum(g_partial, &mut shared);
    let u_total = cube_sum(u_partial, &mut shared);
    if UNIT_POS == 0 {
        h[row * out_features + feature] = g_total / (1.0f32 + f32::exp(-g_total)) * u_total;
    }
}

/// One expert's down projection for the rows that chose it, added into `out` scaled by
/// the row's routing weight: `out += weight * (h @ down.T)` (experts run in order, so the
/// sum is the host dispatch's). Shapes as `moe_gate_up`, `down`: `[out, k]`, `out`:
/// `[rows, out]`, `weights`: `[rows, top_k]`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn moe_down<W: Float, N: Size>(
    h: &Array<Vector<f32, N>>,
    down: &Array<Vector<W, N>>,
    chosen: &Array<u32>,
    weights: &Array<f32>,
    out: &mut Array<f32>,
    expert: u32,
    top_k: usize,
    k_vectors: usize,
    out_features: usize,
    #[comptime] units: usize,
    #[define(W)] _weight_type: StorageType,
) {
    let feature = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize;
    let row = CUBE_POS_Z as usize;
    let slot = moe_slot(chosen, row, top_k, expert);
    if feature >= out_features || slot == top_k {
        terminate!();
    }
    let mut shared = SharedMemory::<f32>::new(units);
    let total = cube_dot(
        h,
        down,
        row * k_vectors,
        feature * k_vectors,
        k_vectors,
        &mut shared,
    );
    if UNIT_POS == 0 {
        let at = row * out_features + feature;
        out[at] = out[at] + total * weights[row * top_k + slot];
    }
}
