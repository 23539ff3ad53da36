// Adam and AdamW, torch.optim.Adam / AdamW semantics. CPU twin: `Adam::twin_update` in src/adam.rs.
//   g = grad (negated when maximize) + weight_decay * p      (L2; weight_decay is 0 for AdamW)
//   p = p * decay                                            (AdamW: decay = 1 - lr * wd; else 1)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   v_max = max(v_max, v)                                    (amsgrad; v_max replaces v below)
//   p = p - step_size * m / (sqrt(v) / bias_correction2_sqrt + eps)
// with step_size = lr / (1 - beta1^t), bias_correction2_sqrt = sqrt(1 - beta2^t), both
// computed on the host in f64 each step, as PyTorch does.

override AMSGRAD: bool = false;
override MAXIMIZE: bool = false;

struct Scalars {
    step_size: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
    weight_decay: f32,
    decay: f32,
}

@group(0) @binding(3) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<f32>;
@group(0) @binding(5) var<storage, read_write> max_exp_avg_sq: array<f32>;

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
    p = p * s.decay;
    let m = s.beta1 * exp_avg[i] + s.one_minus_beta1 * g;
    var v = s.beta2 * exp_avg_sq[i] + s.one_minus_beta2 * (g * g);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if AMSGRAD {
        v = max(max_exp_avg_sq[i], v);
        max_exp_avg_sq[i] = v;
    }
    let denom = sqrt(v) / s.bias_correction2_sqrt + s.eps;
    param[i] = p - s.step_size * (m / denom);
}
