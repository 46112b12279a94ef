//! open_clip's `AttentionalPooler`: learned queries attend to a tower's tokens, turning any
//! number of them into a fixed set (CoCa's image tower: query 0 is the contrastive embedding,
//! the rest the tokens its caption decoder reads).

use burn::module::{Module, Param};
use burn::nn::LayerNorm;
use burn::tensor::{Device, Tensor};

use crate::ops;
use crate::transformer::{Attention, layer_norm, linear, normal};

/// `attn(ln_q(query), ln_k(x))` with open_clip's parameter names (`attn_pool.query`, ...).
#[derive(Module, Debug)]
pub struct AttentionalPooler {
    /// `[n_queries, d_model]`
    pub query: Param<Tensor<2>>,
    /// Queries in `d_model`, keys and values projected from the context's width.
    pub attn: Attention,
    pub ln_q: LayerNorm,
    pub ln_k: LayerNorm,
    pub layer_norm_eps: f64,
}

impl AttentionalPooler {
    /// `n_queries` queries of width `d_model` over a context of width `context_dim`, with
    /// open_clip's initialisation (`randn` queries, `nn.MultiheadAttention`'s Xavier-scale
    /// projections approximated by a normal of the same variance, zero biases).
    pub fn init(
        d_model: usize,
        context_dim: usize,
        heads: usize,
        n_queries: usize,
        layer_norm_eps: f64,
        device: &Device,
    ) -> Self {
        let xavier = |d_in: usize, d_out: usize| (2.0 / (d_in + d_out) as f64).sqrt();
        AttentionalPooler {
            query: normal(1.0).init([n_queries, d_model], device),
            attn: Attention {
                q_proj: linear(d_model, d_model, xavier(d_model, d_model), true, device),
                k_proj: linear(
                    context_dim,
                    d_model,
                    xavier(context_dim, d_model),
                    true,
                    device,
                ),
                v_proj: linear(
                    context_dim,
                    d_model,
                    xavier(context_dim, d_model),
                    true,
                    device,
                ),
                out_proj: linear(d_model, d_model, xavier(d_model, d_model), true, device),
                num_heads: heads,
                causal: false,
            },
            ln_q: layer_norm(d_model, layer_norm_eps, device),
            ln_k: layer_norm(context_dim, layer_norm_eps, device),
            layer_norm_eps,
        }
    }

    /// `[batch, seq, context_dim]` -> `[batch, n_queries, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let batch = x.dims()[0];
        let [n_queries, d_model] = self.query.dims();
        let context = ops::layer_norm(&self.ln_k, self.layer_norm_eps, x);
        let query = ops::layer_norm(&self.ln_q, self.layer_norm_eps, self.query.val())
            .reshape([1, n_queries, d_model])
            .expand([batch, n_queries, d_model]);
        self.attn.attend(query, context, None)
    }
}
