// SGD with momentum, torch.optim.SGD semantics. CPU twin: `Sgd::twin_update` in src/sgd.rs.
//   g = grad (negated when maximize) + weight_decay * p
//   with momentum: buf = g on the first step, else momentum * buf + (1 - dampening) * g
//                  g = g + momentum * buf (nesterov) or g = buf
//   p = p - lr * g

override MOMENTUM: bool = false;
override NESTEROV: bool = false;
override MAXIMIZE: bool = false;

struct Scalars {
    lr: f32,
    weight_decay: f32,
    momentum: f32,
    one_minus_dampening: f32,
    first_step: u32,
}

@group(0) @binding(3) var<storage, read_write> momentum_buffer: array<f32>;

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
    var p = param[i];
    var g = grad[i];
    if MAXIMIZE {
        g = -g;
    }
    g = g + s.weight_decay * p;
    if MOMENTUM {
        var buf = g;
        if s.first_step == 0u {
            buf = s.momentum * momentum_buffer[i] + s.one_minus_dampening * g;
        }
        momentum_buffer[i] = buf;
        if NESTEROV {
            g = g + s.momentum * buf;
        } else {
            g = buf;
        }
    }
    param[i] = p - s.lr * g;
}
