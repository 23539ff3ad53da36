// RMSprop, torch.optim.RMSprop semantics. CPU twin: `RmsProp::twin_update` in rmsprop.rs.
// `g` arrives negated when maximizing and with the L2 term added (src/gpu/prelude.wgsl).
//   v = alpha * v + (1 - alpha) * g * g
//   centered: g_avg = alpha * g_avg + (1 - alpha) * g, and v - g_avg^2 replaces v below
//   avg = sqrt(v) + eps          (PyTorch)   or   sqrt(v + eps)   (EPS_INSIDE_SQRT, Keras/TF style)
//   momentum: buf = momentum * buf + g / avg; p = p - lr * buf
//   else:     p = p - lr * g / avg

override CENTERED: bool = false;
override MOMENTUM: bool = false;
override EPS_INSIDE_SQRT: bool = false;

fn update(i: u32, p: V, g: V) -> V {
    let s = scalars();
    let v = s.alpha * load_square_avg(i) + s.one_minus_alpha * (g * g);
    store_square_avg(i, v);
    var variance = v;
    if CENTERED {
        let g_avg = s.alpha * load_grad_avg(i) + s.one_minus_alpha * g;
        store_grad_avg(i, g_avg);
        variance = v - g_avg * g_avg;
    }
    var avg: V;
    if EPS_INSIDE_SQRT {
        avg = sqrt(variance + s.eps);
    } else {
        avg = sqrt(variance) + s.eps;
    }
    if MOMENTUM {
        let buf = s.momentum * load_momentum_buffer(i) + g / avg;
        store_momentum_buffer(i, buf);
        return p - s.lr * buf;
    }
    return p - s.lr * (g / avg);
}
