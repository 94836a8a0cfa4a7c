//! Mixtral (llm-jp-3.1 8x13b): the sparse mixture-of-experts feed-forward, named as in the
//! Hub checkpoints (`model.layers.N.block_sparse_moe.gate.weight` for the router,
//! `...block_sparse_moe.experts.E.w1|w2|w3.weight` for the experts).

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, IndexingUpdateOp, Int, Tensor, TensorData};
use llmjp_weights::ModelConfig;

use crate::layers::{host_vec, Linear, Loader, Mlp};
use crate::Result;

/// Router plus experts. Each token runs only its `top_k` experts.
#[derive(Debug, Clone)]
pub struct SparseMoe<B: Backend> {
    router: Linear<B>,
    experts: Vec<Mlp<B>>,
    top_k: usize,
}

impl<B: Backend> SparseMoe<B> {
    pub(crate) fn load(loader: &Loader<'_, B>, config: &ModelConfig, layer: usize) -> Result<Self> {
        let prefix = format!("model.layers.{layer}.block_sparse_moe");
        let (hidden, inter) = (config.hidden_size, config.intermediate_size);
        let experts = (0..config.num_local_experts)
            .map(|e| {
                let name = |w: &str| format!("{prefix}.experts.{e}.{w}.weight");
                Ok(Mlp {
                    gate: loader.linear(&name("w1"), hidden, inter)?,
                    up: loader.linear(&name("w3"), hidden, inter)?,
                    down: loader.linear(&name("w2"), inter, hidden)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            router: loader.linear(
                &format!("{prefix}.gate.weight"),
                hidden,
                config.num_local_experts,
            )?,
            experts,
            top_k: config.num_experts_per_tok,
        })
    }

    /// `x` is `[seq, hidden]`. Routing as in transformers: softmax over the experts in f32,
    /// keep the top k, renormalise; each expert's output is scaled in f32 and summed.
    pub fn forward(&self, x: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        let [seq, hidden] = x.dims();
        let dtype = x.dtype();
        let probs = softmax(self.router.forward(x.clone())?.cast(FloatDType::F32), 1);
        let (weights, chosen) = probs.topk_with_indices(self.top_k, 1);
        let weights = weights.clone() / weights.sum_dim(1);
        let weights = host_vec::<f32>(weights.into_data())?;
        let chosen = host_vec::<i64>(chosen.into_data().convert::<i64>())?;
        let chosen: Vec<usize> = chosen.into_iter().map(|e| e as usize).collect();
        let routes = self.routes(&chosen, &weights);
        let device = x.device();
        let mut out = Tensor::<B, 2>::zeros([seq, hidden], (&device, dtype));
        for (expert, (tokens, scales)) in self.experts.iter().zip(routes) {
            if tokens.is_empty() {
                continue;
            }
            let n = tokens.len();
            let tokens: Vec<i64> = tokens.into_iter().map(|t| t as i64).collect();
            let index = Tensor::<B, 1, Int>::from_data(TensorData::new(tokens, [n]), &device);
            let rows = expert.forward(x.clone().select(0, index.clone()))?;
            let scales =
                Tensor::<B, 2>::from_data(TensorData::new(scales, [n, 1]), (&device, DType::F32));
            let scaled = (rows.cast(FloatDType::F32) * scales).cast(dtype);
            out = out.select_assign(0, index, scaled, IndexingUpdateOp::Add);
        }
        Ok(out)
    }

    /// Which tokens (and with which weight) each expert serves, in token order, from each
    /// token's `top_k` chosen experts and their weights.
    fn routes(&self, chosen: &[usize], weights: &[f32]) -> Vec<(Vec<usize>, Vec<f32>)> {
        let mut routes: Vec<(Vec<usize>, Vec<f32>)> = vec![Default::default(); self.experts.len()];
        for (i, (&expert, &weight)) in chosen.iter().zip(weights).enumerate() {
            routes[expert].0.push(i / self.top_k);
            routes[expert].1.push(weight);
        }
        routes
    }

    /// The CPU kernels' path: rows `x` = `[seq, hidden]` on the host, the same routing in
    /// f32, each token's expert outputs summed in expert order.
    pub fn forward_host(&self, x: &[f32], seq: usize) -> Vec<f32> {
        let hidden = x.len() / seq;
        let experts = self.experts.len();
        let logits = self.router.host().matmul(x, seq);
        let (mut chosen, mut weights) = (Vec::new(), Vec::new());
        for logits in logits.chunks_exact(experts) {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            let probs: Vec<f32> = exp.iter().map(|e| e / sum).collect();
            // The top k, highest first; ties to the lower expert index.
            let mut order: Vec<usize> = (0..experts).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            let top = &order[..self.top_k];
            let total: f32 = top.iter().map(|&e| probs[e]).sum();
            chosen.extend(top);
            weights.extend(top.iter().map(|&e| probs[e] / total));
        }
        let routes = self.routes(&chosen, &weights);
        let mut out = vec![0f32; seq * hidden];
        for (expert, (tokens, scales)) in self.experts.iter().zip(routes) {
            if tokens.is_empty() {
                continue;
            }
            let rows: Vec<f32> = tokens
                .iter()
                .flat_map(|&t| &x[t * hidden..(t + 1) * hidden])
                .copied()
                .collect();
            let y = expert.forward_host(&rows, tokens.len());
            for ((&t, scale), y) in tokens.iter().zip(scales).zip(y.chunks_exact(hidden)) {
                for (o, v) in out[t * hidden..(t + 1) * hidden].iter_mut().zip(y) {
                    *o += v * scale;
                }
            }
        }
        out
    }
}
