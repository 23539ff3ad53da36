// Adagrad, torch.optim.Adagrad semantics. CPU twin: `Adagrad::twin_update` in src/adagrad.rs.
//   g = grad (negated when maximize) + weight_decay * p
//   sum = sum + g * g
//   p = p - clr * g / (sqrt(sum) + eps)
// with clr = lr / (1 + (t - 1) * lr_decay) computed on the host each step.

override MAXIMIZE: bool = false;

struct Scalars {
    clr: f32,
    weight_decay: f32,
    eps: f32,
}

@group(0) @binding(3) var<storage, read_write> sum: array<f32>;

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
    let acc = sum[i] + g * g;
    sum[i] = acc;
    param[i] = p - s.clr * (g / (sqrt(acc) + s.eps));
}
