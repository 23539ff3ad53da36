// Adadelta, torch.optim.Adadelta semantics. CPU twin: `Adadelta::twin_update` in adadelta.rs.
// `g` arrives negated when maximizing and with the L2 term added (src/gpu/prelude.wgsl).
//   v = rho * v + (1 - rho) * g * g
//   delta = sqrt(acc_delta + eps) / sqrt(v + eps) * g
//   acc_delta = rho * acc_delta + (1 - rho) * delta * delta
//   p = p - lr * delta

fn update(i: u32, p: V, g: V) -> V {
    let s = scalars();
    let v = s.rho * load_square_avg(i) + s.one_minus_rho * (g * g);
    let rms_grad = sqrt(v + s.eps);
    let acc = load_acc_delta(i);
    let delta = sqrt(acc + s.eps) / rms_grad * g;
    store_square_avg(i, v);
    store_acc_delta(i, s.rho * acc + s.one_minus_rho * (delta * delta));
    return p - s.lr * delta;
}
