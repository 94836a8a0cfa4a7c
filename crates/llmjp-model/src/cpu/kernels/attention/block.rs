//! What attention reads: a block of queries of one head against that head's keys and values
//! in the KV cache's pages, and the loop every instruction set runs over it ([`attend`]),
//! each supplying its vector steps ([`BlockMath`]).

/// Queries per attention task: each key and value is read once for a block of queries.
pub const QUERY_BLOCK: usize = 16;
/// Positions per transposed key block (one AVX-512 vector of f32).
pub const POSITION_BLOCK: usize = 16;
/// Positions per page of the KV cache: the unit its memory is allocated and shared in.
pub const PAGE: usize = 32;

/// One key/value head's keys and values in one page.
pub type HeadPage<'a> = (&'a [f32], &'a [f32]);

/// Up to [`QUERY_BLOCK`] consecutive queries of one head against its cached keys and values,
/// page by page (keys `[PAGE / 16, head_dim, 16]`, values `[PAGE, head_dim]` in each);
/// query `i` sees the first `visible + i` positions.
#[derive(Clone, Copy)]
pub struct HeadBlock<'a> {
    /// The queries, `head_dim` each.
    pub queries: &'a [&'a [f32]],
    /// The head's keys and values, page by page.
    pub pages: &'a [HeadPage<'a>],
    /// Width of one head.
    pub head_dim: usize,
    /// Positions the first query sees.
    pub visible: usize,
}

impl<'a> HeadBlock<'a> {
    /// Positions query `i` sees.
    pub fn seen(&self, i: usize) -> usize {
        self.visible + i
    }

    /// Scores are kept for this many positions per query (whole key blocks).
    pub fn width(&self) -> usize {
        self.seen(self.queries.len() - 1).div_ceil(POSITION_BLOCK) * POSITION_BLOCK
    }

    /// The key blocks of the first [`width`](Self::width) positions, up to `blocks` at a
    /// time (never across a page): `(first position, keys)`.
    pub fn key_chunks(&self, blocks: usize) -> impl Iterator<Item = (usize, &'a [f32])> {
        let chunk = blocks * POSITION_BLOCK;
        self.chunks(self.width(), chunk, |(keys, _)| keys)
    }

    /// The value rows of the positions the last query sees, up to `rows` at a time (never
    /// across a page): `(first position, values)`.
    pub fn value_chunks(&self, rows: usize) -> impl Iterator<Item = (usize, &'a [f32])> {
        self.chunks(self.seen(self.queries.len() - 1), rows, |(_, values)| {
            values
        })
    }

    fn chunks(
        &self,
        positions: usize,
        chunk: usize,
        part: fn(&HeadPage<'a>) -> &'a [f32],
    ) -> impl Iterator<Item = (usize, &'a [f32])> {
        let d = self.head_dim;
        let pages: &'a [HeadPage<'a>] = self.pages;
        pages
            .iter()
            .enumerate()
            .take(positions.div_ceil(PAGE))
            .flat_map(move |(i, page)| {
                let first = i * PAGE;
                let used = (positions - first).min(PAGE);
                part(page)[..used * d]
                    .chunks(chunk * d)
                    .enumerate()
                    .map(move |(c, slice)| (first + c * chunk, slice))
            })
    }
}

/// The steps of [`attend`] in one instruction set's vectors.
pub(crate) trait BlockMath {
    /// The head dimension is a multiple of this.
    const LANES: usize;
    /// Key blocks scored per pass (each read once for all the queries of the block).
    const KEY_BLOCKS: usize;

    /// One query's scores against the key blocks in `keys` (at most
    /// [`KEY_BLOCKS`](Self::KEY_BLOCKS) of [`POSITION_BLOCK`] positions, `[head_dim, 16]`
    /// each), scaled by `1 / sqrt(head_dim)`, into `row`.
    ///
    /// # Safety
    /// The CPU runs the instruction set; `head_dim` is a multiple of `LANES`.
    unsafe fn score(keys: &[f32], query: &[f32], row: &mut [f32]);

    /// Softmax of the first `seen` scores of `row` (whole key blocks); the rest become
    /// exactly zero.
    ///
    /// # Safety
    /// As [`score`](Self::score).
    unsafe fn softmax(row: &mut [f32], seen: usize);

    /// `out += weights[m] * values[m]` for each value row `m` of `values`, in order.
    ///
    /// # Safety
    /// As [`score`](Self::score).
    unsafe fn add_weighted(out: &mut [f32], values: &[f32], weights: &[f32]);
}

/// The block's outputs, `[queries, head_dim]`: scores a chunk of key blocks at a time for
/// every query that sees them, a softmax per query, then values 4 positions at a time.
/// Every query's arithmetic is the same whatever block it is in, so a prefill gives exactly
/// the numbers of single steps.
///
/// # Safety
/// As [`BlockMath::score`]; inlined into a function enabling `M`'s instruction set.
#[inline(always)]
pub(crate) unsafe fn attend<M: BlockMath>(block: &HeadBlock) -> Vec<f32> {
    let (d, count, width) = (block.head_dim, block.queries.len(), block.width());
    assert!(
        d.is_multiple_of(M::LANES),
        "head_dim {d} is not a multiple of {}",
        M::LANES
    );
    let mut scores = vec![0f32; count * width];
    for (first, keys) in block.key_chunks(M::KEY_BLOCKS) {
        for (i, query) in block.queries.iter().enumerate() {
            if block.seen(i) <= first {
                continue;
            }
            let row = &mut scores[i * width + first..][..keys.len() / d];
            // SAFETY: forwarded.
            unsafe { M::score(keys, query, row) };
        }
    }
    for (i, row) in scores.chunks_exact_mut(width).enumerate() {
        // SAFETY: forwarded.
        unsafe { M::softmax(row, block.seen(i)) };
    }
    let mut out = vec![0f32; count * d];
    for (first, values) in block.value_chunks(4) {
        for (i, (o, p)) in out
            .chunks_exact_mut(d)
            .zip(scores.chunks_exact(width))
            .enumerate()
        {
            if block.seen(i) <= first {
                continue;
            }
            // SAFETY: forwarded.
            unsafe { M::add_weighted(o, values, &p[first..]) };
        }
    }
    out
}
