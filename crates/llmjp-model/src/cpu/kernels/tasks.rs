//! How a matmul is shared out: tasks of output columns on rayon's threads, and the
//! four-stream order every decode kernel walks its weight rows in.

use rayon::prelude::*;

/// A `[rows, n]` output computed by tasks of weight rows in parallel: `task(first, count,
/// out)` writes output columns `first..first + count` of every row, reading its weight rows
/// once for all activation rows.
pub(crate) fn in_column_tasks(
    rows: usize,
    n: usize,
    task: impl Fn(usize, usize, SendPtr) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    let out_ptr = SendPtr(out.as_mut_ptr());
    let task_rows = if rows == 1 { 256 } else { 64 };
    (0..n.div_ceil(task_rows)).into_par_iter().for_each(|t| {
        let first = t * task_rows;
        task(first, task_rows.min(n - first), out_ptr);
    });
    out
}

/// A raw output pointer handed to worker threads that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: used only to hand disjoint parts of an output buffer to worker threads.
unsafe impl Send for SendPtr {}
// SAFETY: as above; the pointer itself is never written through by two threads at once.
unsafe impl Sync for SendPtr {}

/// Weight rows `first..first + count` in the order a decode step (one activation row) reads
/// them. Decode is bound by memory: four sequential streams, each through a quarter of the
/// rows, keep the hardware prefetchers busy on four fronts. `four` gets one row of each
/// stream at a time; `one` each row left over.
#[inline(always)]
pub(crate) fn in_four_streams(
    first: usize,
    count: usize,
    mut four: impl FnMut([usize; 4]),
    mut one: impl FnMut(usize),
) {
    let part = count / 4;
    for c in first..first + part {
        four(std::array::from_fn(|s| c + s * part));
    }
    for c in first + 4 * part..first + count {
        one(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_streams_visit_every_row_once() {
        let walk = |first, count| {
            let order = std::cell::RefCell::new(Vec::new());
            in_four_streams(
                first,
                count,
                |rows| order.borrow_mut().extend(rows),
                |r| order.borrow_mut().push(r),
            );
            order.into_inner()
        };
        assert_eq!(walk(3, 9), [3, 5, 7, 9, 4, 6, 8, 10, 11]);
        for count in [0, 1, 3, 4, 5, 17, 256] {
            let mut rows = walk(10, count);
            rows.sort();
            assert_eq!(rows, (10..10 + count).collect::<Vec<_>>(), "{count}");
        }
    }
}
