// Adam and AdamW, torch.optim.Adam / AdamW semantics. CPU twin: `Adam::twin_update` in adam.rs.
// `g` arrives negated when maximizing and with Adam's L2 term added (src/gpu/prelude.wgsl;
// the L2 coefficient is 0 for AdamW).
//   p = p * decay                                            (AdamW: decay = 1 - lr * wd; else 1)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   v_max = max(v_max, v)                                    (amsgrad; v_max replaces v below)
//   p = p - step_size * m / (sqrt(v) / bias_correction2_sqrt + eps)
// with step_size = lr / (1 - beta1^t), bias_correction2_sqrt = sqrt(1 - beta2^t), both
// computed on the host in f64 each step, as PyTorch does.

override AMSGRAD: bool = false;
// AdamW with a non-zero weight decay: the parameter is decayed before the update.
override DECOUPLED: bool = false;

fn update(i: u32, p: V, g: V) -> V {
    let s = scalars();
    let decayed = select(p, p * s.decay, DECOUPLED);
    let m = s.beta1 * load_exp_avg(i) + s.one_minus_beta1 * g;
    var v = s.beta2 * load_exp_avg_sq(i) + s.one_minus_beta2 * (g * g);
    store_exp_avg(i, m);
    store_exp_avg_sq(i, v);
    if AMSGRAD {
        v = max(load_max_exp_avg_sq(i), v);
        store_max_exp_avg_sq(i, v);
    }
    let denom = sqrt(v) / s.bias_correction2_sqrt + s.eps;
    return decayed - s.step_size * (m / denom);
}
