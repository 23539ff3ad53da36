"""Converts torch.optim optimizer state to fused-optim checkpoints (safetensors) and back.

A fused-optim checkpoint names state as PyTorch's flattened state dict does, by parameter
name: `state.<name>.exp_avg`, `state.<name>.step`, ... (1-D, f32), with each group's
hyperparameters as `param_groups.<g>.<key>` and each tensor's place as
`fused_optim.param.<name>` = `<group>:<index in group>:<elements>` in the header metadata.
A fused-optim `ParamSet` built with the same tensor names and groups loads it.

Python API (needs `torch` and `safetensors`):

    to_fused(optimizer, model, "optimizer.safetensors")     # a live torch optimizer out
    from_fused("optimizer.safetensors", optimizer, model)   # ... and back in

and, for files, the two commands:

    python3 tools/torch_checkpoint.py to-fused OPTIMIZER.pt PARAMS.pt OUT.safetensors --rule AdamW
    python3 tools/torch_checkpoint.py to-torch CHECKPOINT.safetensors PARAMS.pt OUT.pt [--scaler S.pt]

where OPTIMIZER.pt is `torch.save(optimizer.state_dict(), ...)`, PARAMS.pt is
`torch.save(params_in_order(optimizer, model), ...)` (the model's parameters by name, in the
optimizer's index order: `dict(model.named_parameters())` where the optimizer took
`model.parameters()`), and OUT.pt is a state dict for `optimizer.load_state_dict` of an
optimizer built with the same groups, the parameters in the same order.

8-bit and bf16 state is widened to f32 on the way to PyTorch; master weights, which
torch.optim does not keep, are left out (write them into the model's params yourself). A
checkpoint made under a loss scaler also gives `torch.amp.GradScaler` its state
(`grad_scaler_state`, `--scaler`).
"""

import argparse
import sys

import torch
from safetensors.torch import load_file, safe_open, save_file

FORMAT_VERSION = "1"
PARAM_PREFIX = "fused_optim.param."
QMAP_PREFIX = "fused_optim.qmap."
BLOCK = 256

# fused-optim's rule for each torch.optim class, with that class's fixed settings, and the
# hyperparameters the rule keeps (PyTorch's names; `eps_inside_sqrt` is fused-optim's own).
RULES = {
    "Adam": ("Adam", {"decoupled_weight_decay": False}),
    "AdamW": ("Adam", {"decoupled_weight_decay": True}),
    "SGD": ("SGD", {}),
    "RMSprop": ("RMSprop", {"eps_inside_sqrt": False}),
    "Adagrad": ("Adagrad", {}),
    "NAdam": ("NAdam", {}),
    "RAdam": ("RAdam", {}),
    "Adamax": ("Adamax", {}),
    "Adadelta": ("Adadelta", {}),
}
HYPERPARAMETERS = {
    "Adam": ["lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "amsgrad",
             "maximize"],
    "SGD": ["lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"],
    "RMSprop": ["lr", "alpha", "eps", "weight_decay", "momentum", "centered", "eps_inside_sqrt",
                "maximize"],
    "Adagrad": ["lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize"],
    "NAdam": ["lr", "betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay",
              "maximize"],
    "RAdam": ["lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize"],
    "Adamax": ["lr", "betas", "eps", "weight_decay", "maximize"],
    "Adadelta": ["lr", "rho", "eps", "weight_decay", "maximize"],
}
# Per-step values every element shares, kept as scalars (fused-optim stores them as f64).
HOST_STATE = {"NAdam": ["mu_product"]}
# Rules whose state counts steps (PyTorch's `state["step"]`).
COUNTS_STEPS = {"Adam", "RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax", "Adadelta"}


def _text(value):
    """A hyperparameter as fused-optim's metadata writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(repr(float(v)) for v in value)
    return repr(float(value))


def _parse(text):
    if text in ("true", "false"):
        return text == "true"
    if "," in text:
        return tuple(float(v) for v in text.split(","))
    return float(text)


def names_in_order(optimizer, model):
    """The model's parameter names in the optimizer's index order (its groups, in order)."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    return [by_id[id(p)] for group in optimizer.param_groups for p in group["params"]]


def params_in_order(optimizer, model):
    """The model's parameters by name in the optimizer's index order: PARAMS.pt."""
    params = dict(model.named_parameters())
    return {name: params[name] for name in names_in_order(optimizer, model)}


def state_dict_to_fused(state_dict, names, numels, torch_class):
    """A torch.optim `state_dict` as fused-optim checkpoint (tensors, metadata). `names[i]` is
    the name of the parameter of index `i`, `numels[i]` its element count."""
    if torch_class not in RULES:
        raise ValueError(f"{torch_class} has no fused-optim rule; known: {sorted(RULES)}")
    rule, fixed = RULES[torch_class]
    tensors, metadata = {}, {"fused_optim.format_version": FORMAT_VERSION,
                             "fused_optim.rule": rule}
    steps = set()
    for g, group in enumerate(state_dict["param_groups"]):
        metadata[f"fused_optim.group.{g}.precision"] = "f32"
        for key in HYPERPARAMETERS[rule]:
            value = fixed[key] if key in fixed else group[key]
            metadata[f"param_groups.{g}.{key}"] = _text(value)
        for k, index in enumerate(group["params"]):
            name = names[index]
            metadata[PARAM_PREFIX + name] = f"{g}:{k}:{numels[index]}"
            state = state_dict["state"].get(index, {})
            for key, value in state.items():
                if value is None:
                    continue  # SGD's momentum_buffer before the first step, or without momentum
                if key == "step":
                    steps.add(int(value))
                    tensors[f"state.{name}.step"] = torch.tensor(float(value), dtype=torch.float32)
                elif key in HOST_STATE.get(rule, []):
                    tensors[f"state.{name}.{key}"] = value.detach().to(torch.float64).reshape(())
                else:
                    tensors[f"state.{name}.{key}"] = value.detach().to(torch.float32).reshape(-1)
    if len(steps) > 1:
        raise ValueError(f"parameters are at different steps {sorted(steps)}; fused-optim keeps one")
    if rule in COUNTS_STEPS:
        count = steps.pop() if steps else 0
    else:
        # SGD keeps no step: one is enough to say the momentum buffers exist.
        count = 1 if tensors else 0
    metadata["fused_optim.steps"] = str(count)
    metadata["fused_optim.applied"] = str(count)
    return tensors, metadata


def _widened(path):
    """The checkpoint's tensors with 8-bit codes and bf16 state widened to f32."""
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    for name in list(tensors):
        if name not in tensors:
            continue  # an absmax, folded into its codes already
        absmax = tensors.get(name + ".absmax")
        if name.startswith("state.") and tensors[name].dtype == torch.uint8 and absmax is not None:
            slot = name.rsplit(".", 1)[1]
            table = tensors[QMAP_PREFIX + metadata[QMAP_PREFIX + slot]]
            blocks = torch.arange(tensors[name].numel()) // BLOCK
            tensors[name] = table[tensors[name].long()] * absmax[blocks]
            del tensors[name + ".absmax"]
        elif name.startswith("state.") and tensors[name].dtype == torch.bfloat16:
            tensors[name] = tensors[name].float()
    return tensors, metadata


def fused_to_state_dict(path, shapes, names=None):
    """A fused-optim checkpoint file as a torch.optim state dict, and its rule. `shapes` maps
    each parameter name to its shape; `names` lists the names in the optimizer's index order
    (its groups in order), by default the checkpoint's own order (group, then index)."""
    tensors, metadata = _widened(path)
    rule = metadata["fused_optim.rule"]
    if rule == "RMSprop" and any(
            value == "true" for key, value in metadata.items() if key.endswith(".eps_inside_sqrt")):
        raise ValueError("RMSprop with eps inside the square root has no torch.optim form")
    places = {}
    for key, value in metadata.items():
        if key.startswith(PARAM_PREFIX):
            group, index, _ = (int(v) for v in value.split(":"))
            places[key[len(PARAM_PREFIX):]] = (group, index)
    if names is None:
        names = sorted(places, key=places.get)
    if sorted(names) != sorted(places):
        raise ValueError(f"the checkpoint's tensors {sorted(places)} are not {sorted(names)}")
    groups = 1 + max(group for group, _ in places.values())
    steps = int(metadata["fused_optim.applied"])
    state_dict = {"state": {}, "param_groups": []}
    for g in range(groups):
        prefix = f"param_groups.{g}."
        group = {key[len(prefix):]: _parse(value) for key, value in metadata.items()
                 if key.startswith(prefix)}
        group.pop("eps_inside_sqrt", None)
        group["params"] = [i for i, name in enumerate(names) if places[name][0] == g]
        state_dict["param_groups"].append(group)
    if [i for group in state_dict["param_groups"] for i in group["params"]] != list(range(len(names))):
        raise ValueError("the names are not in group order: list each group's parameters in turn")
    for index, name in enumerate(names):
        state = {}
        for key, value in tensors.items():
            if key.startswith(f"state.{name}.") and key.count(".") == name.count(".") + 2:
                slot = key.rsplit(".", 1)[1]
                if slot in ("master", "master_remainder"):
                    continue
                if slot == "step" or slot in HOST_STATE.get(rule, []):
                    state[slot] = value.to(torch.float32).reshape(())
                else:
                    state[slot] = value.reshape(shapes[name])
        if rule == "SGD" and ("momentum_buffer" not in state or steps == 0):
            # PyTorch's first step starts the buffer at the grad, as a zero step count does here.
            state["momentum_buffer"] = None
        if state:
            state_dict["state"][index] = state
    return state_dict, rule


def grad_scaler_state(path):
    """The loss scaler's state of a fused-optim checkpoint made under a grad guard with a
    scaler, as `torch.amp.GradScaler.load_state_dict` takes it; None without one."""
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    prefix = "grad_scaler."
    state = {key[len(prefix):]: value for key, value in metadata.items() if key.startswith(prefix)}
    if not state:
        return None
    ints = ("growth_interval", "_growth_tracker")
    return {key: int(value) if key in ints else float(value) for key, value in state.items()}


def to_fused(optimizer, model, path):
    """Writes a live torch.optim `optimizer` over `model`'s parameters as a fused-optim
    checkpoint at `path`."""
    names = names_in_order(optimizer, model)
    params = dict(model.named_parameters())
    numels = [params[name].numel() for name in names]
    tensors, metadata = state_dict_to_fused(
        optimizer.state_dict(), names, numels, type(optimizer).__name__)
    save_file(tensors, path, metadata)


def from_fused(path, optimizer, model):
    """Loads the fused-optim checkpoint at `path` into a live torch.optim `optimizer` over
    `model`'s parameters, built with the same groups."""
    shapes = {name: p.shape for name, p in model.named_parameters()}
    state_dict, _ = fused_to_state_dict(path, shapes, names_in_order(optimizer, model))
    # Carry the optimizer's own options (foreach, fused, ...) that fused-optim does not keep.
    for ours, theirs in zip(state_dict["param_groups"], optimizer.state_dict()["param_groups"]):
        for key, value in theirs.items():
            ours.setdefault(key, value)
    optimizer.load_state_dict(state_dict)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("to-fused", help="torch state dict -> fused-optim checkpoint")
    out.add_argument("optimizer", help="torch.save(optimizer.state_dict())")
    out.add_argument("params", help="torch.save(params_in_order(optimizer, model))")
    out.add_argument("output", help="the fused-optim checkpoint to write (.safetensors)")
    out.add_argument("--rule", required=True, help="the torch.optim class: " + ", ".join(RULES))
    back = commands.add_parser("to-torch", help="fused-optim checkpoint -> torch state dict")
    back.add_argument("checkpoint", help="a fused-optim checkpoint (.safetensors)")
    back.add_argument("params", help="torch.save(params_in_order(optimizer, model))")
    back.add_argument("output", help="the state dict to write (.pt) for load_state_dict")
    back.add_argument("--scaler", help="also write the loss scaler's state (.pt) for "
                      "torch.amp.GradScaler.load_state_dict")
    args = parser.parse_args(argv)
    params = torch.load(args.params)
    if args.command == "to-fused":
        state_dict = torch.load(args.optimizer)
        names = list(params)
        numels = [params[name].numel() for name in names]
        tensors, metadata = state_dict_to_fused(state_dict, names, numels, args.rule)
        save_file(tensors, args.output, metadata)
    else:
        state_dict, rule = fused_to_state_dict(
            args.checkpoint, {name: p.shape for name, p in params.items()}, list(params))
        torch.save(state_dict, args.output)
        scaler = grad_scaler_state(args.checkpoint)
        if args.scaler and scaler is None:
            raise ValueError(f"{args.checkpoint} holds no loss scaler state")
        if args.scaler:
            torch.save(scaler, args.scaler)
        print(f"{args.output}: {rule} state of {len(state_dict['state'])} parameters")


if __name__ == "__main__":
    main(sys.argv[1:])
