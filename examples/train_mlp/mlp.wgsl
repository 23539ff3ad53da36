// The example trainer's forward and backward kernels (examples/train_mlp/mlp.rs): a naive
// multilayer perceptron, one invocation per output value, each summing in index order so the
// CPU twin (`CpuModel` in mlp.rs) performs the same f32 operations in the same order.
// Weights are [inputs][outputs] row-major; activations are [rows][width] row-major.

struct Dims {
    rows: u32,
    inputs: u32,
    outputs: u32,
    // 1 when the layer's output goes through ReLU.
    relu: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> output: array<f32>;

// output[r][j] = act(bias[j] + sum_i input[r][i] * weight[i][j])
@compute @workgroup_size(64)
fn linear_forward(@builtin(global_invocation_id) id: vec3<u32>) {
    let index = id.x;
    if index >= dims.rows * dims.outputs {
        return;
    }
    let r = index / dims.outputs;
    let j = index % dims.outputs;
    var sum = bias[j];
    for (var i = 0u; i < dims.inputs; i++) {
        sum += input[r * dims.inputs + i] * weight[i * dims.outputs + j];
    }
    if dims.relu == 1u {
        sum = max(sum, 0.0);
    }
    output[index] = sum;
}

@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;
// The loss scale (the first f32 of fused-optim's grad status, or 1).
@group(0) @binding(5) var<storage, read> loss_scale: array<f32>;

// Per row: loss = log(sum_j exp(z_j - max)) + max - z_label, and the gradient of the batch
// mean times the loss scale, (softmax - onehot) / rows * scale. `dims.outputs` is the class
// count.
@compute @workgroup_size(64)
fn softmax_cross_entropy(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    if r >= dims.rows {
        return;
    }
    let classes = dims.outputs;
    let row = r * classes;
    var top = logits[row];
    for (var j = 1u; j < classes; j++) {
        top = max(top, logits[row + j]);
    }
    var total = 0.0;
    for (var j = 0u; j < classes; j++) {
        total += exp(logits[row + j] - top);
    }
    let label = labels[r];
    loss[r] = log(total) + top - logits[row + label];
    let scale = 1.0 / f32(dims.rows);
    for (var j = 0u; j < classes; j++) {
        let p = exp(logits[row + j] - top) / total;
        dlogits[row + j] = (p - select(0.0, 1.0, j == label)) * scale * loss_scale[0];
    }
}

@group(0) @binding(1) var<storage, read> layer_input: array<f32>;
@group(0) @binding(2) var<storage, read> doutput: array<f32>;
@group(0) @binding(3) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(4) var<storage, read_write> dbias: array<f32>;

// dweight[i][j] = sum_r input[r][i] * doutput[r][j]; the invocations with i == 0 also write
// dbias[j] = sum_r doutput[r][j].
@compute @workgroup_size(64)
fn linear_backward_params(@builtin(global_invocation_id) id: vec3<u32>) {
    let index = id.x;
    if index >= dims.inputs * dims.outputs {
        return;
    }
    let i = index / dims.outputs;
    let j = index % dims.outputs;
    var sum = 0.0;
    for (var r = 0u; r < dims.rows; r++) {
        sum += layer_input[r * dims.inputs + i] * doutput[r * dims.outputs + j];
    }
    dweight[index] = sum;
    if i == 0u {
        var bias_sum = 0.0;
        for (var r = 0u; r < dims.rows; r++) {
            bias_sum += doutput[r * dims.outputs + j];
        }
        dbias[j] = bias_sum;
    }
}

@group(0) @binding(1) var<storage, read> upstream: array<f32>;
@group(0) @binding(2) var<storage, read> weight_t: array<f32>;
@group(0) @binding(3) var<storage, read> activation: array<f32>;
@group(0) @binding(4) var<storage, read_write> dinput: array<f32>;

// dinput[r][i] = (sum_j upstream[r][j] * weight[i][j]) where the ReLU output activation[r][i]
// is positive, else 0.
@compute @workgroup_size(64)
fn linear_backward_input(@builtin(global_invocation_id) id: vec3<u32>) {
    let index = id.x;
    if index >= dims.rows * dims.inputs {
        return;
    }
    let r = index / dims.inputs;
    let i = index % dims.inputs;
    var sum = 0.0;
    for (var j = 0u; j < dims.outputs; j++) {
        sum += upstream[r * dims.outputs + j] * weight_t[i * dims.outputs + j];
    }
    dinput[index] = select(0.0, sum, activation[index] > 0.0);
}
