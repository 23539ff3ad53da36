// Adagrad, torch.optim.Adagrad semantics. CPU twin: `Adagrad::twin_update` in adagrad.rs.
// `g` arrives negated when maximizing and with the L2 term added (src/gpu/prelude.wgsl).
//   sum = sum + g * g
//   p = p - clr * g / (sqrt(sum) + eps)
// with clr = lr / (1 + (t - 1) * lr_decay) computed on the host each step.

fn update(i: u32, p: V, g: V) -> V {
    let s = scalars();
    let acc = load_sum(i) + g * g;
    store_sum(i, acc);
    return p - s.clr * (g / (sqrt(acc) + s.eps));
}
