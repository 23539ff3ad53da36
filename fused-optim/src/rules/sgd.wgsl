// SGD with momentum, torch.optim.SGD semantics. CPU twin: `Sgd::twin_update` in sgd.rs.
// `g` arrives negated when maximizing and with the L2 term added (src/gpu/prelude.wgsl).
//   with momentum: buf = g on the first step, else momentum * buf + (1 - dampening) * g
//                  g = g + momentum * buf (nesterov) or g = buf
//   p = p - lr * g

override MOMENTUM: bool = false;
override NESTEROV: bool = false;

fn update(i: u32, p: V, g_in: V) -> V {
    let s = scalars();
    var g = g_in;
    if MOMENTUM {
        var buf = g;
        if s.first_step == 0u {
            buf = s.momentum * load_momentum_buffer(i) + s.one_minus_dampening * g;
        }
        store_momentum_buffer(i, buf);
        if NESTEROV {
            g = g + s.momentum * buf;
        } else {
            g = buf;
        }
    }
    return p - s.lr * g;
}
