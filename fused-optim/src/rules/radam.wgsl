// RAdam, torch.optim.RAdam semantics. CPU twin: `RAdam::twin_update` in radam.rs.
// `g` arrives negated when maximizing and with the L2 term added (src/gpu/prelude.wgsl; the
// L2 coefficient is 0 when the weight decay is decoupled).
//   p = p * decay                                  (decoupled: decay = 1 - lr * wd)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   rectified steps:   p = p - step_size * m / (sqrt(v) + eps)
//   the steps before:  p = p - step_size * m
// with `rectified` and step_size (lr * rect * sqrt(1 - beta2^t) / (1 - beta1^t), or
// lr / (1 - beta1^t) before) computed on the host each step: the branch depends on t alone,
// so every invocation of a dispatch takes the same one.

// RAdamW with a non-zero weight decay: the parameter is decayed before the update.
override DECOUPLED: bool = false;

fn update(i: u32, p: V, g: V) -> V {
    let s = scalars();
    let decayed = select(p, p * s.decay, DECOUPLED);
    let m = s.beta1 * load_exp_avg(i) + s.one_minus_beta1 * g;
    let v = s.beta2 * load_exp_avg_sq(i) + s.one_minus_beta2 * (g * g);
    store_exp_avg(i, m);
    store_exp_avg_sq(i, v);
    if s.rectified == 0u {
        return decayed - s.step_size * m;
    }
    return decayed - s.step_size * (m / (sqrt(v) + s.eps));
}
