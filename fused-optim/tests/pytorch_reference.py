"""Generates tests/data/pytorch_reference.json: real torch.optim steps that tests/pytorch.rs
checks the CPU twins and the GPU kernels against, for every rule and flag combination PyTorch
has (RMSprop's eps_inside_sqrt has no PyTorch counterpart; Lion is not in torch.optim and is
checked against its paper's formula in tests/textbook.rs instead).

    python3 -m pip install torch numpy && python3 tests/pytorch_reference.py

Hyperparameters are bolder than PyTorch's defaults (eps 1e-2, weight decay 0.3, lr up to 0.2)
so that every term moves the result far past the test's tolerance.
"""

import itertools
import json
import pathlib

import numpy as np
import torch

LEN = 7
LEARNING_RATES = [0.1, 0.03, 0.2]
RADAM_LEARNING_RATES = [0.1, 0.03, 0.2, 0.05, 0.12, 0.08, 0.15, 0.06]
rng = np.random.default_rng(20261123)


def nonzero(n):
    """Values in ±[0.05, 1): never zero, as the Rust tests' data."""
    return (rng.uniform(0.05, 1.0, n) * rng.choice([-1.0, 1.0], n)).astype(np.float32)


def configs():
    for maximize, (momentum, dampening, nesterov) in itertools.product(
        [False, True], [(0.0, 0.0, False), (0.9, 0.3, False), (0.9, 0.0, True)]
    ):
        yield "sgd", torch.optim.SGD, dict(
            momentum=momentum, dampening=dampening, nesterov=nesterov,
            weight_decay=0.3, maximize=maximize)
    for maximize, amsgrad, decoupled in itertools.product([False, True], repeat=3):
        yield "adam", torch.optim.AdamW if decoupled else torch.optim.Adam, dict(
            betas=(0.8, 0.9), eps=1e-2, weight_decay=0.3, amsgrad=amsgrad, maximize=maximize)
    for maximize, centered, momentum in itertools.product([False, True], [False, True], [0.0, 0.9]):
        yield "rmsprop", torch.optim.RMSprop, dict(
            alpha=0.9, eps=1e-2, weight_decay=0.3, momentum=momentum, centered=centered,
            maximize=maximize)
    for maximize in [False, True]:
        yield "adagrad", torch.optim.Adagrad, dict(
            lr_decay=0.1, weight_decay=0.3, initial_accumulator_value=0.5, eps=1e-2,
            maximize=maximize)
    # The rules added with the registry, after the first four so that those cases draw the
    # same random numbers as before.
    for maximize, decoupled in itertools.product([False, True], repeat=2):
        yield "nadam", torch.optim.NAdam, dict(
            betas=(0.8, 0.9), eps=1e-2, weight_decay=0.3, momentum_decay=0.1,
            decoupled_weight_decay=decoupled, maximize=maximize)
    for maximize, decoupled in itertools.product([False, True], repeat=2):
        # Eight steps: rho_t passes 5 at the sixth, so both branches run.
        yield "radam", torch.optim.RAdam, dict(
            betas=(0.8, 0.9), eps=1e-2, weight_decay=0.3, decoupled_weight_decay=decoupled,
            maximize=maximize), RADAM_LEARNING_RATES
    for maximize in [False, True]:
        yield "adamax", torch.optim.Adamax, dict(
            betas=(0.8, 0.9), eps=1e-2, weight_decay=0.3, maximize=maximize)
    for maximize in [False, True]:
        yield "adadelta", torch.optim.Adadelta, dict(
            rho=0.9, eps=1e-2, weight_decay=0.3, maximize=maximize)


def case(rule, optimizer_class, options, learning_rates=LEARNING_RATES):
    params = nonzero(LEN)
    grads = [nonzero(LEN) for _ in learning_rates]
    tensor = torch.tensor(params, requires_grad=True)
    optimizer = optimizer_class([tensor], lr=learning_rates[0], foreach=False, **options)
    # The group as a porter hands it over: every key PyTorch keeps, implementation choices
    # (foreach, fused, capturable, differentiable) included.
    param_group = dict(optimizer.state_dict()["param_groups"][0])
    for lr, grad in zip(learning_rates, grads):
        for group in optimizer.param_groups:
            group["lr"] = lr
        tensor.grad = torch.tensor(grad)
        optimizer.step()
    state = {
        name: (value.reshape(-1).tolist() if value.numel() == LEN else [float(value)])
        for name, value in optimizer.state[tensor].items()
    }
    if rule == "adam":
        options = dict(options, decoupled_weight_decay=optimizer_class is torch.optim.AdamW)
    if "betas" in options:
        options["betas"] = list(options["betas"])
    return {
        "rule": rule,
        "options": options,
        "param_group": param_group,
        "learning_rates": learning_rates,
        "params": params.tolist(),
        "grads": [g.tolist() for g in grads],
        "expected": {"params": tensor.detach().numpy().tolist(), "state": state},
    }


cases = [case(*config) for config in configs()]
out = pathlib.Path(__file__).with_name("data") / "pytorch_reference.json"
out.write_text(json.dumps({"torch": torch.__version__, "cases": cases}, indent=1) + "\n")
print(f"{len(cases)} cases from torch {torch.__version__} -> {out}")
