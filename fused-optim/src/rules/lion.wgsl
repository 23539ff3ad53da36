// Lion (Chen et al. 2023). CPU twin: `Lion::twin_update` in lion.rs.
// `g` arrives negated when maximizing (src/gpu/prelude.wgsl); Lion's weight decay is
// decoupled, so no L2 term is added.
//   c = beta1 * m + (1 - beta1) * g
//   p = p * decay - lr * sign(c)           (decay = 1 - lr * wd; exactly 1 without it)
//   m = beta2 * m + (1 - beta2) * g
// WGSL's sign(0) is 0, as PyTorch's.

fn update(i: u32, p: V, g: V) -> V {
    let s = scalars();
    let m = load_exp_avg(i);
    let c = s.beta1 * m + s.one_minus_beta1 * g;
    store_exp_avg(i, s.beta2 * m + s.one_minus_beta2 * g);
    return p * s.decay - s.lr * sign(c);
}
