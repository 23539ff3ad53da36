// Adamax, torch.optim.Adamax semantics. CPU twin: `Adamax::twin_update` in adamax.rs.
// `g` arrives negated when maximizing and with the L2 term added (src/gpu/prelude.wgsl).
//   m = beta1 * m + (1 - beta1) * g
//   u = max(beta2 * u, |g| + eps)
//   p = p - clr * m / u
// with clr = lr / (1 - beta1^t) computed on the host each step.

fn update(i: u32, p: V, g: V) -> V {
    let s = scalars();
    let m = s.beta1 * load_exp_avg(i) + s.one_minus_beta1 * g;
    let u = max(s.beta2 * load_exp_inf(i), abs(g) + s.eps);
    store_exp_avg(i, m);
    store_exp_inf(i, u);
    return p - s.clr * (m / u);
}
