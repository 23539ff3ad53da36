"""Converts torch.optim optimizer state to fused-optim checkpoints (safetensors) and back.

A fused-optim checkpoint names state as PyTorch's flattened state dict does, by parameter
name: `state.<name>.exp_avg`, `state.<name>.step`, ... (1-D, f32), with each group's
hyperparameters as `param_groups.<g>.<key>` and each tensor's place as
`fused_optim.param.<name>` = `<group>:<index in group>:<elements>` in the header metadata.
A fused-optim `ParamSet` built with the same tensor names and groups loads it.

Python API (needs `torch` and `safetensors`, and fused-optim's `fused-optim/rule-schema.json`,
found beside this script in the repository or named by FUSED_OPTIM_RULE_SCHEMA):

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

Hyperparameters and flags come from the state dict's param_groups; `--rule` names the class,
which must agree with them. What cannot be mapped is refused (ValueError, the command's error
message), before anything is written:
- a group value the class never has (`--rule AdamW` on decoupled_weight_decay=False: that
  is Adam) or another class's hyperparameters in a group; a key that an older PyTorch did not
  write takes the class's documented default, said on stderr;
- state the flags contradict: a slot the rule does not keep with them (max_exp_avg_sq
  without amsgrad, grad_avg without centered, momentum_buffer with momentum 0, exp_avg under
  SGD), or one it keeps missing after a step;
- a PARAMS.pt that is not the optimizer's parameters: another count, an entry that is not a
  floating tensor (a buffer of `model.state_dict()`), a state tensor of another shape;
- param_names (torch >= 2.6 keeps them where the optimizer was built from
  `model.named_parameters()`): they name each index, and PARAMS.pt (or the model, for the
  live API) must list exactly those names in that order. Without param_names only the order
  of PARAMS.pt names the state: two parameters of one shape listed swapped cannot be detected,
  and each gets the other's state.

Going to PyTorch, the groups carry param_names where the checkpoint names real tensors (a
ParamSet's; not the indices "0", "1", ... of a single or foreach optimizer's checkpoint).
PyTorch's load_state_dict does not check them: an optimizer built from `model.parameters()`
takes them on (its state_dict() then has them, and add_param_group of a group without names
fails); pop "param_names" from each group to keep it without. `from_fused` writes them only
into an optimizer that has names.

PyTorch's SGD keeps no step count: pass `--step N` (`to_fused(..., step=N)`), which fused-optim
restores as its step count; without it, the count is 1 where momentum buffers exist and 0
otherwise, with a warning. For the other classes the state's own step must agree with it.

8-bit and bf16 state is widened to f32 on the way to PyTorch; master weights, which
torch.optim does not keep, are left out (write them into the model's params yourself). A
checkpoint made under a loss scaler also gives `torch.amp.GradScaler` its state
(`grad_scaler_state`, `--scaler`).
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

# What fused-optim declares about its rules (fused-optim/rule-schema.json, written from the
# library's rule declarations and held to them by its tests): each checkpoint rule's state, and
# each torch.optim class's rule, hyperparameters with PyTorch's defaults, and the values the
# class always has.
# FUSED_OPTIM_RULE_SCHEMA names another copy, for this script used outside the repository.
SCHEMA_PATH = Path(os.environ.get("FUSED_OPTIM_RULE_SCHEMA") or
                   Path(__file__).resolve().parent.parent / "fused-optim" / "rule-schema.json")
SCHEMA_VERSION = 1


def _load_schema(path=SCHEMA_PATH):
    try:
        with open(path) as f:
            schema = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: fused-optim's rule schema, which this converter reads; "
                                "run it from the repository, or set FUSED_OPTIM_RULE_SCHEMA to a "
                                "copy of fused-optim/rule-schema.json") from None
    if schema.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path} has schema version {schema.get('schema_version')}, this "
                         f"converter reads {SCHEMA_VERSION}")
    return schema


def _value(value):
    """A schema value as torch.optim holds it (a pair as a tuple)."""
    return tuple(value) if isinstance(value, list) else value


_SCHEMA = _load_schema()
# The checkpoint's metadata keys.
_KEYS = _SCHEMA["checkpoint"]
FORMAT_VERSION = str(_KEYS["format_version"])
VERSION_KEY = _KEYS["version_key"]
PARAM_PREFIX = _KEYS["param_prefix"]
GROUP_PREFIX = _KEYS["group_prefix"]
QMAP_PREFIX = _KEYS["qmap_prefix"]
# The metadata key of the elements per 8-bit block; files without it (older ones) have blocks
# of 256 with an f32 `.absmax` per block in place of the bf16 `.scale`.
BLOCK_KEY = _KEYS["block_key"]
LEGACY_BLOCK = 256

# fused-optim's rule for each torch.optim class, with the values that class always has (a
# group with another value is another class's; `eps_inside_sqrt` is fused-optim's own).
RULES = {cls: (entry["rule"], {key: _value(v) for key, v in entry["always"].items()})
         for cls, entry in _SCHEMA["torch_classes"].items()}
# Each class's hyperparameters the rule keeps, with PyTorch's documented defaults: these fill
# in the keys a state dict of an older PyTorch lacks.
HYPERPARAMETERS = {cls: {key: _value(h["default"]) for key, h in entry["hyperparameters"].items()}
                   for cls, entry in _SCHEMA["torch_classes"].items()}
KNOWN_HYPERPARAMETERS = {key for keys in HYPERPARAMETERS.values() for key in keys}
# Each rule's state per parameter, with the hyperparameter a slot needs on (None: always
# kept). PyTorch creates a slot at the first step exactly where its flag is on.
SLOTS = {rule: {**({"step": None} if entry["counts_steps"] else {}),
                **{key: None for key in entry["host_state"]},
                **{slot: entry["kept_with"].get(slot) for slot in entry["state_slots"]}}
         for rule, entry in _SCHEMA["rules"].items()}
# Per-step values every element shares, kept as scalars (fused-optim stores them as f64).
HOST_STATE = {rule: entry["host_state"] for rule, entry in _SCHEMA["rules"].items()}
PARAMS_HINT = ("pass params_in_order(optimizer, model) (the model's named_parameters in the "
               "optimizer's order), not model.state_dict()")


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


def _warn(message):
    print(f"torch_checkpoint: warning: {message}", file=sys.stderr)


def _not_in_torch(rule):
    """fused-optim's own hyperparameters of `rule` that its torch classes lack, with the value
    that is PyTorch's behaviour (RMSprop's eps_inside_sqrt=False)."""
    return {key: value for cls, (ours, always) in RULES.items() if ours == rule
            for key, value in always.items() if key not in HYPERPARAMETERS[cls]}


def _fitting(groups, slots=(), rule=None):
    """The classes that have every hyperparameter the groups hold, with the values the class
    always has, and whose rule (`rule`, where given) keeps the state `slots`: all of them, and
    where there are any, the slots it keeps whatever the flags."""
    held = set().union(*[KNOWN_HYPERPARAMETERS & set(group) for group in groups])
    slots = set(slots)
    return [cls for cls, (ours, always) in RULES.items()
            if rule in (None, ours) and held <= set(HYPERPARAMETERS[cls])
            and all(group.get(key, value) == value for group in groups
                    for key, value in always.items())
            and slots <= set(SLOTS[ours])
            and (not slots or slots >= {key for key, flag in SLOTS[ours].items() if not flag})]


def _fits(group, slots):
    """Which --rule fits a group with state `slots`, in words."""
    fits = _fitting([group], slots)
    return (f"--rule {' or '.join(fits)} fits it" if fits
            else "no torch.optim class this converter knows fits it")


def _on(flag, on=True):
    """A slot's hyperparameter setting in words: a number is on above 0 (momentum), a flag
    when true."""
    if any(type(defaults.get(flag)) is float for defaults in HYPERPARAMETERS.values()):
        return f"{flag} > 0" if on else f"{flag} = 0"
    return f"{flag}={on}"


def _hyperparameters(torch_class, g, group, slots):
    """Group `g`'s hyperparameters for `torch_class`: the state dict's values; where it lacks
    one, the value the class always has, or else its default (said: a dict of an older
    PyTorch). `slots`: the group's state, for the error naming the class that fits."""
    always = RULES[torch_class][1]
    foreign = sorted(KNOWN_HYPERPARAMETERS & set(group) - set(HYPERPARAMETERS[torch_class]))
    if foreign:
        raise ValueError(f"param_groups[{g}] has {', '.join(foreign)}, which {torch_class} has "
                         f"not: {_fits(group, slots)}")
    values = {}
    for key, default in {**HYPERPARAMETERS[torch_class], **always}.items():
        if key in always and group.get(key, default) != default:
            raise ValueError(f"param_groups[{g}] has {key}={group[key]}, which {torch_class} "
                             f"never has: {_fits(group, slots)}")
        if key not in group and key not in always:
            _warn(f"param_groups[{g}] has no {key!r} (a state dict of an older PyTorch?): "
                  f"taking {torch_class}'s default {default!r}")
        values[key] = group.get(key, default)
    return values


def _check_slots(torch_class, g, group, values, name, state):
    """Refuses state the flags contradict: PyTorch keeps a slot exactly where its flag is on,
    from the first step on."""
    slots = SLOTS[RULES[torch_class][0]]
    foreign = [key for key in state if key not in slots]
    if foreign:
        raise ValueError(f"parameter {name!r} has state {', '.join(foreign)}, which {torch_class} "
                         f"does not keep: {_fits(group, state)}")
    for key in state:
        flag = slots[key]
        if flag and not values[flag]:
            raise ValueError(f"parameter {name!r} has {key!r}, which {torch_class} keeps only with "
                             f"{_on(flag)}, but param_groups[{g}] has {flag}={values[flag]!r}: the "
                             f"state fits {_on(flag)}")
    if state and float(state.get("step", 1)) > 0:
        for key, flag in slots.items():
            if key not in state and (flag is None or values[flag]):
                kept = f"with {_on(flag)}" if flag else "from the first step"
                fit = f"the state fits {_on(flag, False)}" if flag else _fits(group, state)
                raise ValueError(f"parameter {name!r} has stepped but has no {key!r}, which "
                                 f"{torch_class} keeps {kept}: {fit}")


def _check_params(params):
    """Refuses a PARAMS.pt whose entries cannot be parameters."""
    if not isinstance(params, dict):
        raise ValueError(f"PARAMS.pt holds a {type(params).__name__}, not tensors by name: "
                         f"{PARAMS_HINT}")
    for name, param in params.items():
        if not (torch.is_tensor(param) and param.is_floating_point()):
            what = f"{param.dtype} tensor" if torch.is_tensor(param) else type(param).__name__
            raise ValueError(f"PARAMS.pt's {name!r} is a {what}, not a parameter: {PARAMS_HINT}")


def _param_names(state_dict):
    """The names the state dict's param_groups give its parameters, in index order, or None
    without them (torch >= 2.6 keeps them where the optimizer took named_parameters())."""
    groups = state_dict["param_groups"]
    if not any("param_names" in group for group in groups):
        return None
    for g, group in enumerate(groups):
        if len(group.get("param_names", ())) != len(group["params"]):
            raise ValueError(f"param_groups[{g}] has {len(group.get('param_names', ()))} "
                             f"param_names for {len(group['params'])} parameters")
    return [name for group in groups for name in group["param_names"]]


def _check_order(listed, names):
    """Refuses params that are not the ones param_names lists, in that order."""
    for index, (ours, theirs) in enumerate(zip(listed, names)):
        if ours != theirs:
            raise ValueError(f"the optimizer's param_names have {ours!r} as parameter {index}, "
                             f"the params {theirs!r}: {PARAMS_HINT}")


def names_in_order(optimizer, model):
    """The model's parameter names in the optimizer's index order (its groups, in order)."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    names = [by_id.get(id(p)) for group in optimizer.param_groups for p in group["params"]]
    if None in names:
        raise ValueError(f"the optimizer's parameter {names.index(None)} is not the model's")
    return names


def params_in_order(optimizer, model):
    """The model's parameters by name in the optimizer's index order: PARAMS.pt."""
    params = dict(model.named_parameters())
    return {name: params[name] for name in names_in_order(optimizer, model)}


def state_dict_to_fused(state_dict, params, torch_class, step=None):
    """A torch.optim `state_dict` as fused-optim checkpoint (tensors, metadata). `params` maps
    each parameter's name to it (or a tensor of its shape), in the optimizer's index order:
    params_in_order(optimizer, model). `step`: the steps taken, which PyTorch's SGD does not
    keep."""
    if torch_class not in RULES:
        raise ValueError(f"{torch_class} has no fused-optim rule; known: {', '.join(RULES)}")
    rule = RULES[torch_class][0]
    groups = state_dict["param_groups"]
    indices = [index for group in groups for index in group["params"]]
    if indices != list(range(len(indices))):
        raise ValueError("the param_groups do not list their parameters as 0, 1, ... in turn, "
                         "as torch.optim's state_dict() does")
    # The count first: it is what tells a model.state_dict() (buffers too) apart.
    if len(params) != len(indices):
        raise ValueError(f"PARAMS.pt holds {len(params)} tensors, the optimizer's param_groups "
                         f"{len(indices)} parameters: {PARAMS_HINT}")
    _check_params(params)
    names = list(params)
    listed = _param_names(state_dict)
    if listed is not None:
        _check_order(listed, names)
    tensors, metadata = {}, {VERSION_KEY: FORMAT_VERSION,
                             "fused_optim.rule": rule}
    steps = set()
    for g, group in enumerate(groups):
        # A None slot is SGD's momentum_buffer before the first step, or without momentum.
        states = {index: {key: value for key, value in state_dict["state"].get(index, {}).items()
                          if value is not None} for index in group["params"]}
        values = _hyperparameters(torch_class, g, group, set().union(*states.values()))
        metadata[f"{GROUP_PREFIX}{g}.precision"] = "f32"
        for key, value in values.items():
            metadata[f"param_groups.{g}.{key}"] = _text(value)
        for k, index in enumerate(group["params"]):
            name, param, state = names[index], params[names[index]], states[index]
            metadata[PARAM_PREFIX + name] = f"{g}:{k}:{param.numel()}"
            _check_slots(torch_class, g, group, values, name, state)
            for key, value in state.items():
                if key == "step":
                    steps.add(int(value))
                    tensors[f"state.{name}.step"] = torch.tensor(float(value), dtype=torch.float32)
                elif key in HOST_STATE.get(rule, []):
                    tensors[f"state.{name}.{key}"] = value.detach().to(torch.float64).reshape(())
                elif value.shape != param.shape:
                    raise ValueError(f"state {key!r} of parameter {index} has shape "
                                     f"{tuple(value.shape)}, PARAMS.pt's {name!r} there "
                                     f"{tuple(param.shape)}: {PARAMS_HINT}")
                else:
                    tensors[f"state.{name}.{key}"] = value.detach().to(torch.float32).reshape(-1)
    if len(steps) > 1:
        raise ValueError(f"parameters are at different steps {sorted(steps)}; fused-optim keeps one")
    if "step" in SLOTS[rule]:
        count = steps.pop() if steps else 0
        if step is not None and step != count:
            raise ValueError(f"the state is at step {count}, not {step}: {torch_class} counts its "
                             f"steps itself, leave --step (step=) out")
    else:
        least = 1 if tensors else 0  # momentum buffers exist from the first step on
        if step is not None and step < least:
            raise ValueError(f"step {step}: the state shows at least {least} steps taken")
        # With momentum, PyTorch's first step starts the buffer at the grad; resumed past a
        # step, fused-optim would take a later step's form instead.
        lacking = [names[index] for group in groups if group.get("momentum", 0) > 0
                   for index in group["params"]
                   if state_dict["state"].get(index, {}).get("momentum_buffer") is None]
        if step and lacking:
            raise ValueError(f"step {step} with momentum, but {lacking[0]!r} has no "
                             "momentum_buffer, which PyTorch's SGD creates at the first step: "
                             "the state fits --step 0")
        if step is None and tensors:
            _warn(f"PyTorch's {torch_class} keeps no step count, so the true one is unknown: "
                  f"writing {least}; pass --step N (step=N), the steps taken, which "
                  "schedules key on")
        count = least if step is None else step
    metadata["fused_optim.steps"] = str(count)
    metadata["fused_optim.applied"] = str(count)
    return tensors, metadata


def _layout(metadata, tensor, slot, scales):
    """The code bits and scale shift of the block-coded `state.<tensor>.<slot>`, from its
    group's layout key (the library's declaration of its format); files written before those
    keys had bf16 scales with 8-bit codes and exponent bytes with 4-bit ones."""
    group = metadata[PARAM_PREFIX + tensor].split(":")[0]
    text = metadata.get(f"{GROUP_PREFIX}{group}.layout.{slot}")
    if text is None:
        return (4, 23) if scales.dtype == torch.uint8 else (8, 16)
    fields = dict(part.split("=", 1) for part in text.split(","))
    return int(fields["code_bits"]), int(fields["scale_shift"])


def _scale_values(scales, shift):
    """Each block's scale: the f32 whose bits are the scale's (little-endian bytes) shifted
    left by `shift`."""
    width = scales.element_size()
    raw = scales.contiguous().view(torch.uint8).reshape(-1, width).to(torch.int32)
    bits = sum(raw[:, k] << (8 * k) for k in range(width))
    return (bits << shift).view(torch.float32)


def _is_scale(tensors, name, scale_suffix):
    """Whether `name` holds the block scales of a tensor of codes (decoded with them)."""
    codes = tensors.get(name[:-len(scale_suffix)]) if name.endswith(scale_suffix) else None
    return codes is not None and codes.dtype == torch.uint8


def _widened(path):
    """The checkpoint's tensors with block codes and bf16 state widened to f32."""
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    block = int(metadata.get(BLOCK_KEY, LEGACY_BLOCK))
    scale_suffix = ".scale" if BLOCK_KEY in metadata else ".absmax"
    for name in list(tensors):
        if name not in tensors:
            continue  # a block scale, folded into its codes already
        scales = tensors.get(name + scale_suffix)
        if name.startswith("state.") and tensors[name].dtype == torch.uint8 and scales is not None:
            # Element i is table[code] * scale[i // block], or table[code] itself where that
            # is NaN or inf (the library's README, "The file"); codes of `bits` bits sit
            # little end first in each byte.
            tensor, slot = name[len("state."):].rsplit(".", 1)
            kind = metadata[QMAP_PREFIX + slot]
            if scale_suffix == ".absmax":
                bits, scales = 8, scales.float()
            else:
                bits, shift = _layout(metadata, tensor, slot, scales)
                scales = _scale_values(scales, shift)
            codes = tensors[name].long()
            if bits < 8:
                elements = int(metadata[PARAM_PREFIX + tensor].split(":")[2])
                codes = torch.stack([(codes >> (bits * k)) & ((1 << bits) - 1)
                                     for k in range(8 // bits)], dim=1).flatten()[:elements]
            table = tensors[QMAP_PREFIX + kind + ("" if bits == 8 else str(bits))]
            values = table[codes]
            blocks = torch.arange(values.numel()) // block
            scaled = values * scales[blocks]
            tensors[name] = torch.where(torch.isfinite(values), scaled, values)
            del tensors[name + scale_suffix]
        elif (name.startswith("state.") and tensors[name].dtype in (torch.bfloat16, torch.float16)
              and not _is_scale(tensors, name, scale_suffix)):
            tensors[name] = tensors[name].float()
    return tensors, metadata


def fused_to_state_dict(path, params):
    """A fused-optim checkpoint file as a torch.optim state dict, and its rule. `params` maps
    each parameter's name to it (or a tensor of its shape), in the optimizer's index order (its
    groups in order): params_in_order(optimizer, model). The groups carry param_names where the
    checkpoint's names are a ParamSet's, not the indices of a single or foreach optimizer's."""
    _check_params(params)
    tensors, metadata = _widened(path)
    rule = metadata["fused_optim.rule"]
    if rule not in {ours for ours, _ in RULES.values()}:
        raise ValueError(f"{rule} has no torch.optim class")
    own = _not_in_torch(rule)
    places = {}
    for key, value in metadata.items():
        if key.startswith(PARAM_PREFIX):
            places[key[len(PARAM_PREFIX):]] = tuple(int(v) for v in value.split(":"))
    names = list(params)
    if sorted(names) != sorted(places):
        raise ValueError(f"the checkpoint's tensors {sorted(places)} are not PARAMS.pt's "
                         f"{sorted(names)}: {PARAMS_HINT}")
    for name in names:
        if params[name].numel() != places[name][2]:
            raise ValueError(f"{name!r} has {places[name][2]} elements in the checkpoint, "
                             f"{params[name].numel()} in PARAMS.pt: {PARAMS_HINT}")
    real_names = set(names) != {str(i) for i in range(len(names))}
    groups = 1 + max(group for group, _, _ in places.values())
    steps = int(metadata["fused_optim.applied"])
    state_dict = {"state": {}, "param_groups": []}
    for g in range(groups):
        prefix = f"param_groups.{g}."
        group = {key[len(prefix):]: _parse(value) for key, value in metadata.items()
                 if key.startswith(prefix)}
        for key, torch_value in own.items():
            value = group.pop(key, torch_value)
            if value != torch_value:
                raise ValueError(f"{rule} with {key}={value} has no torch.optim form (PyTorch's "
                                 f"behaviour is {key}={torch_value})")
        group["params"] = [i for i, name in enumerate(names) if places[name][0] == g]
        if real_names:
            group["param_names"] = [names[i] for i in group["params"]]
        state_dict["param_groups"].append(group)
    if [i for group in state_dict["param_groups"] for i in group["params"]] != list(range(len(names))):
        raise ValueError("the names are not in group order: list each group's parameters in turn")
    if "step" not in SLOTS[rule] and steps:
        _warn(f"PyTorch's {rule} has no place for the step count {steps}: pass --step {steps} "
              "(step=) when converting back")
    for index, name in enumerate(names):
        state = {}
        for key, value in tensors.items():
            if key.startswith(f"state.{name}.") and key.count(".") == name.count(".") + 2:
                slot = key.rsplit(".", 1)[1]
                if slot in ("master", "master_remainder", "master_correction"):
                    continue
                if slot == "step" or slot in HOST_STATE.get(rule, []):
                    state[slot] = value.to(torch.float32).reshape(())
                else:
                    state[slot] = value.reshape(params[name].shape)
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


def to_fused(optimizer, model, path, step=None):
    """Writes a live torch.optim `optimizer` over `model`'s parameters as a fused-optim
    checkpoint at `path`; `step`: the step count, for SGD, which keeps none."""
    tensors, metadata = state_dict_to_fused(
        optimizer.state_dict(), params_in_order(optimizer, model), type(optimizer).__name__, step)
    save_file(tensors, path, metadata)


def from_fused(path, optimizer, model):
    """Loads the fused-optim checkpoint at `path` into a live torch.optim `optimizer` over
    `model`'s parameters, built with the same groups."""
    params = params_in_order(optimizer, model)
    state_dict, rule = fused_to_state_dict(path, params)
    torch_class = type(optimizer).__name__
    fits = _fitting(state_dict["param_groups"], rule=rule)
    if torch_class not in fits:
        # AdamW, for one, would turn the checkpoint's decoupled_weight_decay=False into True.
        build = (f"build torch.optim.{' or '.join(fits)}" if fits
                 else "no torch.optim class takes it")
        raise ValueError(f"{path} holds state torch.optim.{torch_class} cannot take: {build}")
    theirs = optimizer.state_dict()
    listed = _param_names(theirs)
    if listed is not None:
        _check_order(listed, list(params))
    for ours, their_group in zip(state_dict["param_groups"], theirs["param_groups"]):
        if "param_names" not in their_group:
            ours.pop("param_names", None)  # load_state_dict would give the optimizer names
        # Carry the optimizer's own options (foreach, fused, ...) that fused-optim does not keep.
        for key, value in their_group.items():
            ours.setdefault(key, value)
    optimizer.load_state_dict(state_dict)


SWAP_CAVEAT = ("Where the state dict's param_groups have no param_names (an optimizer built "
               "from model.parameters(), or torch < 2.6), only PARAMS.pt's order names the "
               "state: two parameters of one shape listed swapped cannot be detected, and "
               "each gets the other's state.")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser(
        "to-fused", help="torch state dict -> fused-optim checkpoint",
        description="Hyperparameters and flags come from the state dict; --rule must agree "
        "with them, and the state with the flags. " + SWAP_CAVEAT)
    out.add_argument("optimizer", help="torch.save(optimizer.state_dict())")
    out.add_argument("params", help="torch.save(params_in_order(optimizer, model)), not "
                     "model.state_dict(): with param_names in the state dict, exactly those "
                     "names in that order")
    out.add_argument("output", help="the fused-optim checkpoint to write (.safetensors)")
    out.add_argument("--rule", required=True, help="the torch.optim class: " + ", ".join(RULES))
    out.add_argument("--step", type=int, help="the steps taken, for SGD, whose state has no "
                     "step count (default: 1 where momentum buffers exist, 0 otherwise, with a "
                     "warning); for the other classes it must be the state's step")
    back = commands.add_parser(
        "to-torch", help="fused-optim checkpoint -> torch state dict",
        description="The groups carry param_names where the checkpoint names real tensors. "
        "PyTorch's SGD has no place for the step count: it is lost, pass --step N to "
        "to-fused on the way back.")
    back.add_argument("checkpoint", help="a fused-optim checkpoint (.safetensors)")
    back.add_argument("params", help="torch.save(params_in_order(optimizer, model))")
    back.add_argument("output", help="the state dict to write (.pt) for load_state_dict")
    back.add_argument("--scaler", help="also write the loss scaler's state (.pt) for "
                      "torch.amp.GradScaler.load_state_dict")
    args = parser.parse_args(argv)
    params = torch.load(args.params)
    try:
        if args.command == "to-fused":
            tensors, metadata = state_dict_to_fused(
                torch.load(args.optimizer), params, args.rule, args.step)
            save_file(tensors, args.output, metadata)
        else:
            state_dict, rule = fused_to_state_dict(args.checkpoint, params)
            scaler = grad_scaler_state(args.checkpoint)
            if args.scaler and scaler is None:
                raise ValueError(f"{args.checkpoint} holds no loss scaler state")
            torch.save(state_dict, args.output)
            if args.scaler:
                torch.save(scaler, args.scaler)
            fits = _fitting(state_dict["param_groups"], rule=rule)
            print(f"{args.output}: {rule} state of {len(state_dict['state'])} parameters, for "
                  f"torch.optim.{' or '.join(fits)}")
    except ValueError as error:
        print(f"torch_checkpoint: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
