// NAdam, torch.optim.NAdam semantics. CPU twin: `NAdam::twin_update` in nadam.rs.
// `g` arrives negated when maximizing and with the L2 term added (src/gpu/prelude.wgsl; the
// L2 coefficient is 0 when the weight decay is decoupled).
//   p = p * decay                                  (decoupled: decay = 1 - lr * wd)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   denom = sqrt(v / bias_correction2) + eps
//   p = p - grad_coef * g / denom, then p = p - momentum_coef * m / denom
// with bias_correction2 = 1 - beta2^t, grad_coef = lr * (1 - mu_t) / (1 - mu_product) and
// momentum_coef = lr * mu_{t+1} / (1 - mu_product * mu_{t+1}), computed on the host each step
// from the momentum schedule and the host's mu_product.

// NAdamW with a non-zero weight decay: the parameter is decayed before the update.
override DECOUPLED: bool = false;

fn update(i: u32, p: V, g: V) -> V {
    let s = scalars();
    let decayed = select(p, p * s.decay, DECOUPLED);
    let m = s.beta1 * load_exp_avg(i) + s.one_minus_beta1 * g;
    let v = s.beta2 * load_exp_avg_sq(i) + s.one_minus_beta2 * (g * g);
    store_exp_avg(i, m);
    store_exp_avg_sq(i, v);
    let denom = sqrt(v / s.bias_correction2) + s.eps;
    let stepped = decayed - s.grad_coef * (g / denom);
    return stepped - s.momentum_coef * (m / denom);
}
