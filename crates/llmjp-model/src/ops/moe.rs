//! Mixture-of-experts routing and expert dispatch, written once for every backend's ops
//! (see [`sparse_moe`](super::sparse_moe)).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::dtype::float_dtype;
use crate::numerics::softmax;
use crate::params::Mlp;
use crate::Result;

/// The rows one expert serves, in row order, and the expert's weight for each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Route {
    /// Rows routed to the expert.
    pub rows: Vec<usize>,
    /// Their routing weights, one per row.
    pub weights: Vec<f32>,
}

/// Routing as in transformers' Mixtral: per row of `logits` (`[rows, experts]`, f32), a
/// softmax over the experts, the `top_k` most probable (ties to the lower index), their
/// probabilities renormalised to sum to one. Returns one [`Route`] per expert.
pub fn route(logits: &[f32], experts: usize, top_k: usize) -> Vec<Route> {
    let mut routes = vec![Route::default(); experts];
    let mut probs = vec![0f32; experts];
    let mut order: Vec<usize> = Vec::with_capacity(experts);
    for (row, logits) in logits.chunks_exact(experts).enumerate() {
        probs.copy_from_slice(logits);
        softmax(&mut probs);
        order.clear();
        order.extend(0..experts);
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let top = &order[..top_k.min(experts)];
        let total: f32 = top.iter().map(|&e| probs[e]).sum();
        for &e in top {
            routes[e].rows.push(row);
            routes[e].weights.push(probs[e] / total);
        }
    }
    routes
}

/// The sparse MoE block given the router's `logits` (`[rows, experts]`, f32): rows
/// [`route`]d on the host, then each expert runs only its rows through `run`, and its
/// outputs, scaled in f32, are added into theirs in expert order.
pub fn dispatch<B: Backend>(
    x: Tensor<B, 2>,
    logits: &[f32],
    experts: &[Mlp<B>],
    top_k: usize,
    mut run: impl FnMut(&Mlp<B>, Tensor<B, 2>) -> Result<Tensor<B, 2>>,
) -> Result<Tensor<B, 2>> {
    let [rows, hidden] = x.dims();
    let dtype = x.dtype();
    let device = x.device();
    let mut out = Tensor::<B, 2>::zeros([rows, hidden], (&device, dtype));
    for (expert, route) in experts.iter().zip(route(logits, experts.len(), top_k)) {
        if route.rows.is_empty() {
            continue;
        }
        let n = route.rows.len();
        let index: Vec<i64> = route.rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [n]), &device);
        let y = run(expert, x.clone().select(0, index.clone()))?;
        let scales = Tensor::<B, 2>::from_data(
            TensorData::new(route.weights, [n, 1]),
            (&device, DType::F32),
        );
        let scaled = (y.cast(FloatDType::F32) * scales).cast(float_dtype(dtype));
        out = out.select_assign(0, index, scaled, IndexingUpdateOp::Add);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_pick_the_top_k_and_renormalise() {
        // Row 0 prefers experts 2 then 0; row 1 prefers 1 then 2.
        let logits = [1.0, -1.0, 2.0, 0.0, /* */ 0.0, 3.0, 1.0, -2.0];
        let routes = route(&logits, 4, 2);
        assert_eq!(routes[0].rows, [0]);
        assert_eq!(routes[1].rows, [1]);
        assert_eq!(routes[2].rows, [0, 1]);
        assert!(routes[3].rows.is_empty());
        let p = |a: f32, b: f32| 1.0 / (1.0 + (b - a).exp());
        assert!((routes[2].weights[0] - p(2.0, 1.0)).abs() < 1e-6);
        assert!((routes[0].weights[0] - p(1.0, 2.0)).abs() < 1e-6);
        assert!((routes[1].weights[0] - p(3.0, 1.0)).abs() < 1e-6);
    }

    #[test]
    fn ties_go_to_the_lower_expert() {
        let routes = route(&[0.5, 0.5, 0.5], 3, 1);
        assert_eq!(routes[0].rows, [0]);
        assert_eq!(routes[0].weights, [1.0]);
    }
}
