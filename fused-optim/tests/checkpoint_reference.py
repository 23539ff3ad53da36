"""Generates the PyTorch interop golden data of tests/checkpoint_interop.rs, in two phases:

    python3 -m pip install torch safetensors numpy
    python3 tests/checkpoint_reference.py torch
    FUSED_OPTIM_WRITE_GOLDEN=1 cargo test -p fused-optim --test checkpoint_interop
    python3 tests/checkpoint_reference.py fused

Phase `torch`: for each case (a torch.optim optimizer over a small two-layer model, two
parameter groups), six steps on fixed grads; after three, tools/torch_checkpoint.py converts
the optimizer to tests/data/checkpoints/<case>.torch.safetensors. Written to
tests/data/checkpoint_interop.json: the initial params, the grads, the params after three
steps and after six, and the state after six.

The Rust test then runs the same three steps on the GPU and (with FUSED_OPTIM_WRITE_GOLDEN)
writes its checkpoint and params to <case>.fused.safetensors and <case>.fused-params.safetensors.

Phase `fused`: converts each fused-optim checkpoint back with tools/torch_checkpoint.py into a
fresh torch optimizer over the fused params, continues three steps there, and adds the result
to the JSON as `from_fused`. Hyperparameters are bold (eps 1e-2, weight decay 0.3) so that a
wrong term moves results far past the test's bound.
"""

import json
import pathlib
import sys

import numpy as np
import torch
from safetensors.torch import load_file

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent / "tools"))
import torch_checkpoint  # noqa: E402

DATA = HERE / "data"
FILES = DATA / "checkpoints"
JSON = DATA / "checkpoint_interop.json"
SHAPES = {"fc1.weight": (5, 7), "fc1.bias": (5,), "fc2.weight": (3, 5), "fc2.bias": (3,)}
GROUPS = [["fc1.weight", "fc2.weight"], ["fc1.bias", "fc2.bias"]]
STEPS = 6
SAVED_AT = 3

CASES = {
    "adam": (torch.optim.Adam, dict(betas=(0.8, 0.9), eps=1e-2)),
    "adamw_amsgrad": (torch.optim.AdamW, dict(betas=(0.8, 0.9), eps=1e-2, amsgrad=True)),
    "sgd_momentum": (torch.optim.SGD, dict(momentum=0.9, dampening=0.3)),
    "rmsprop_centered": (torch.optim.RMSprop, dict(alpha=0.9, eps=1e-2, centered=True,
                                                   momentum=0.5)),
    "adagrad": (torch.optim.Adagrad, dict(lr_decay=0.1, initial_accumulator_value=0.5,
                                          eps=1e-2)),
    "nadam": (torch.optim.NAdam, dict(betas=(0.8, 0.9), eps=1e-2, momentum_decay=0.1)),
}
# The groups differ in lr and weight decay.
GROUP_OPTIONS = [dict(lr=0.1, weight_decay=0.3), dict(lr=0.03, weight_decay=0.0)]


def nonzero(rng, shape):
    """Values in ±[0.05, 1): never zero, as the Rust tests' data."""
    n = int(np.prod(shape))
    values = rng.uniform(0.05, 1.0, n) * rng.choice([-1.0, 1.0], n)
    return torch.tensor(values.astype(np.float32)).reshape(shape)


class Model(torch.nn.Module):
    def __init__(self, params):
        super().__init__()
        self.fc1 = torch.nn.Linear(7, 5)
        self.fc2 = torch.nn.Linear(5, 3)
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(params[name])


def optimizer_of(case, model):
    cls, options = CASES[case]
    named = dict(model.named_parameters())
    groups = [dict(params=[named[n] for n in names], **GROUP_OPTIONS[g])
              for g, names in enumerate(GROUPS)]
    return cls(groups, foreach=False, **options)


def run(model, optimizer, grads):
    for step_grads in grads:
        for name, p in model.named_parameters():
            p.grad = step_grads[name].clone()
        optimizer.step()


def flat(tensors):
    return {name: t.detach().reshape(-1).tolist() for name, t in tensors.items()}


def params_of(model):
    return flat(dict(model.named_parameters()))


def state_of(model, optimizer):
    state = {}
    for name, p in model.named_parameters():
        for key, value in optimizer.state[p].items():
            if torch.is_tensor(value):
                state[f"{name}.{key}"] = value.detach().reshape(-1).tolist()
    return state


def phase_torch():
    rng = np.random.default_rng(20261202)
    FILES.mkdir(parents=True, exist_ok=True)
    cases = {}
    for case in CASES:
        initial = {name: nonzero(rng, shape) for name, shape in SHAPES.items()}
        grads = [{name: nonzero(rng, shape) for name, shape in SHAPES.items()}
                 for _ in range(STEPS)]
        model = Model(initial)
        optimizer = optimizer_of(case, model)
        run(model, optimizer, grads[:SAVED_AT])
        torch_checkpoint.to_fused(optimizer, model, str(FILES / f"{case}.torch.safetensors"))
        saved = params_of(model)
        run(model, optimizer, grads[SAVED_AT:])
        cases[case] = {
            "torch_class": CASES[case][0].__name__,
            "initial": flat(initial),
            "grads": [flat(g) for g in grads],
            "saved": saved,
            "torch": {"params": params_of(model), "state": state_of(model, optimizer)},
        }
    document = {"shapes": {n: list(s) for n, s in SHAPES.items()}, "groups": GROUPS,
                "saved_at": SAVED_AT, "steps": STEPS, "torch_version": torch.__version__,
                "cases": cases}
    JSON.write_text(json.dumps(document, indent=1) + "\n")


def phase_fused():
    document = json.loads(JSON.read_text())
    for case, data in document["cases"].items():
        fused_params = load_file(str(FILES / f"{case}.fused-params.safetensors"))
        model = Model({n: fused_params[n].reshape(SHAPES[n]) for n in SHAPES})
        optimizer = optimizer_of(case, model)
        torch_checkpoint.from_fused(str(FILES / f"{case}.fused.safetensors"), optimizer, model)
        grads = [{n: torch.tensor(g[n]).reshape(SHAPES[n]) for n in SHAPES}
                 for g in data["grads"][SAVED_AT:]]
        run(model, optimizer, grads)
        data["from_fused"] = {"params": params_of(model), "state": state_of(model, optimizer)}
    JSON.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    {"torch": phase_torch, "fused": phase_fused}[sys.argv[1]]()
