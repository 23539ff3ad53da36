// RMSprop, torch.optim.RMSprop semantics. CPU twin: `RmsProp::twin_update` in src/rmsprop.rs.
//   g = grad (negated when maximize) + weight_decay * p
//   v = alpha * v + (1 - alpha) * g * g
//   centered: g_avg = alpha * g_avg + (1 - alpha) * g, and v - g_avg^2 replaces v below
//   avg = sqrt(v) + eps          (PyTorch)   or   sqrt(v + eps)   (EPS_INSIDE_SQRT, Keras/TF style)
//   momentum: buf = momentum * buf + g / avg; p = p - lr * buf
//   else:     p = p - lr * g / avg

override CENTERED: bool = false;
override MOMENTUM: bool = false;
override EPS_INSIDE_SQRT: bool = false;
override MAXIMIZE: bool = false;

struct Scalars {
    lr: f32,
    alpha: f32,
    one_minus_alpha: f32,
    eps: f32,
    weight_decay: f32,
    momentum: f32,
}

@group(0) @binding(3) var<storage, read_write> square_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> momentum_buffer: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad_avg: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = element_index(workgroup, workgroups, local);
    if i >= step.n {
        return;
    }
    let s = step.s;
    let p = param[i];
    var g = grad[i];
    if MAXIMIZE {
        g = -g;
    }
    g = g + s.weight_decay * p;
    let v = s.alpha * square_avg[i] + s.one_minus_alpha * (g * g);
    square_avg[i] = v;
    var variance = v;
    if CENTERED {
        let g_avg = s.alpha * grad_avg[i] + s.one_minus_alpha * g;
        grad_avg[i] = g_avg;
        variance = v - g_avg * g_avg;
    }
    var avg: f32;
    if EPS_INSIDE_SQRT {
        avg = sqrt(variance + s.eps);
    } else {
        avg = sqrt(variance) + s.eps;
    }
    if MOMENTUM {
        let buf = s.momentum * momentum_buffer[i] + g / avg;
        momentum_buffer[i] = buf;
        param[i] = p - s.lr * buf;
    } else {
        param[i] = p - s.lr * (g / avg);
    }
}
