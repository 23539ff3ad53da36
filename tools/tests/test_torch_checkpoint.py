"""tools/torch_checkpoint.py against real torch.optim: what it converts, and what it refuses.

Each test writes only under its own tmp_path. Run: python -m pytest tools/tests -q
"""

import copy
import importlib.util
import inspect
import json
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import torch_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[2]
CHECKPOINTS = REPO / "fused-optim" / "tests" / "data" / "checkpoints"
HINT = "params_in_order(optimizer, model)"


def net(norm=torch.nn.LayerNorm):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), norm(4), torch.nn.Linear(4, 2))


def grads(model, step):
    """Fixed grads for step `step`, the same for every copy of a model."""
    generator = torch.Generator().manual_seed(step)
    return [torch.randn(p.shape, generator=generator) for p in model.parameters()]


def train(model, optimizer, steps, first=0):
    for step in range(first, first + steps):
        for p, grad in zip(model.parameters(), grads(model, step)):
            p.grad = grad
        optimizer.step()


def trained(make, steps=3, model=None, **options):
    model = model or net()
    optimizer = make(model.parameters(), lr=0.1, **options)
    train(model, optimizer, steps)
    return model, optimizer


def save(tmp_path, name, value):
    path = tmp_path / name
    torch.save(value, path)
    return str(path)


def metadata(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def to_fused(tmp_path, state_dict, params, *options):
    """Runs the to-fused command: (exit status, output path)."""
    output = tmp_path / "out.safetensors"
    status = torch_checkpoint.main(["to-fused", save(tmp_path, "optimizer.pt", state_dict),
                                    save(tmp_path, "params.pt", params), str(output), *options])
    return status, output


def refused(capsys, status, output, *words):
    """A refusal: exit status 1, nothing written, the error saying `words`."""
    err = capsys.readouterr().err
    assert status == 1 and not output.exists(), err
    assert "Traceback" not in err
    for word in words:
        assert word in err


SHAPES = {"fc1.weight": (5, 7), "fc1.bias": (5,), "fc2.weight": (3, 5), "fc2.bias": (3,)}
GROUPS = [["fc1.weight", "fc2.weight"], ["fc1.bias", "fc2.bias"]]  # checkpoint_reference.py's


class ReferenceModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(7, 5)
        self.fc2 = torch.nn.Linear(5, 3)


def reference_model():
    """checkpoint_reference.py's model, with the params of its Adam case's ParamSet."""
    model = ReferenceModel()
    saved = load_file(str(CHECKPOINTS / "adam.fused-params.safetensors"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(saved[name].reshape(SHAPES[name]))
    return model


def reference_groups(model, named=False):
    params = dict(model.named_parameters())
    return [{"params": [(n, params[n]) if named else params[n] for n in names]}
            for names in GROUPS]


def reference_params():
    """PARAMS.pt of the reference model."""
    model = reference_model()
    return torch_checkpoint.params_in_order(torch.optim.Adam(reference_groups(model)), model)


# (a) decoupled_weight_decay comes from the state dict, and a class that contradicts it is refused.

@pytest.mark.parametrize("make", [lambda params, **kw: torch.optim.Adam(
    params, decoupled_weight_decay=True, **kw), torch.optim.AdamW], ids=["Adam-decoupled", "AdamW"])
# AdamW's load_state_dict sets decoupled_weight_decay whatever the dict says; Adam's takes the
# dict's, so a wrong one shows there.
@pytest.mark.parametrize("target", [torch.optim.Adam, torch.optim.AdamW])
def test_decoupled_weight_decay_carried_by_rule_adam(tmp_path, make, target):
    model, optimizer = trained(make, weight_decay=0.3)
    params = torch_checkpoint.params_in_order(optimizer, model)
    status, fused = to_fused(tmp_path, optimizer.state_dict(), params, "--rule", "Adam")
    assert status == 0
    assert metadata(fused)["param_groups.0.decoupled_weight_decay"] == "true"
    back = tmp_path / "back.pt"
    assert torch_checkpoint.main(["to-torch", str(fused), save(tmp_path, "p.pt", params),
                                  str(back)]) == 0

    resumed = copy.deepcopy(model)
    fresh = target(resumed.parameters())
    fresh.load_state_dict(torch.load(back))
    train(model, optimizer, 2, first=3)
    train(resumed, fresh, 2, first=3)
    for ours, theirs in zip(resumed.parameters(), model.parameters()):
        assert (ours - theirs).abs().max() <= 1e-7


def test_rule_adamw_on_plain_adam_refused(tmp_path):
    """Also: the command's refusal is one line on stderr, exit status 1, no file written."""
    model, optimizer = trained(torch.optim.Adam, weight_decay=0.3)
    output = tmp_path / "out.safetensors"
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "torch_checkpoint.py"), "to-fused",
         save(tmp_path, "optimizer.pt", optimizer.state_dict()),
         save(tmp_path, "params.pt", torch_checkpoint.params_in_order(optimizer, model)),
         str(output), "--rule", "AdamW"], capture_output=True, text=True)
    assert run.returncode == 1 and not output.exists()
    assert run.stderr == ("torch_checkpoint: error: param_groups[0] has "
                          "decoupled_weight_decay=False, which AdamW never has: --rule Adam "
                          "fits it\n")


def test_defaults_are_torchs():
    """The defaults that fill in an older PyTorch's missing keys are the installed torch's."""
    for torch_class, defaults in torch_checkpoint.HYPERPARAMETERS.items():
        signature = inspect.signature(getattr(torch.optim, torch_class)).parameters
        for key, default in defaults.items():
            if key in signature:
                assert signature[key].default == default, (torch_class, key)


def test_from_fused_into_the_wrong_class_refused():
    model = reference_model()
    adamw = torch.optim.AdamW(reference_groups(model))
    with pytest.raises(ValueError, match="build torch.optim.Adam$"):
        torch_checkpoint.from_fused(str(CHECKPOINTS / "adam.fused.safetensors"), adamw, model)
    sgd = torch.optim.SGD(reference_groups(model))
    with pytest.raises(ValueError, match="build torch.optim.Adam$"):
        torch_checkpoint.from_fused(str(CHECKPOINTS / "adam.fused.safetensors"), sgd, model)


# (b) param_names name the indices: PARAMS.pt must list them in the same order.

def test_swapped_layernorm_params_refused_with_param_names(tmp_path, capsys):
    model = net()
    optimizer = torch.optim.Adam(model.named_parameters(), lr=0.1)
    train(model, optimizer, 1)
    params = dict(model.named_parameters())
    order = ["0.weight", "0.bias", "1.bias", "1.weight", "2.weight", "2.bias"]
    status, output = to_fused(tmp_path, optimizer.state_dict(), {n: params[n] for n in order},
                              "--rule", "Adam")
    refused(capsys, status, output, "'1.weight' as parameter 2", "the params '1.bias'", HINT)


def test_live_param_names_must_be_the_models(tmp_path):
    model = net()
    optimizer = torch.optim.Adam(model[1].named_parameters())  # names "weight", "bias"
    train(model[1], optimizer, 1)
    with pytest.raises(ValueError, match="'weight' as parameter 0, the params '1.weight'"):
        torch_checkpoint.to_fused(optimizer, model, str(tmp_path / "out.safetensors"))
    assert not (tmp_path / "out.safetensors").exists()


# (c) PARAMS.pt must be the optimizer's parameters, not the model's state dict.

@pytest.mark.parametrize("pick, error", [
    (lambda sd: sd, "PARAMS.pt holds 9 tensors, the optimizer's param_groups 6 parameters"),
    (lambda sd: {k: sd[k] for k in list(sd)[:6]},
     "state 'exp_avg' of parameter 4 has shape (2, 4), PARAMS.pt's '1.running_mean' there (4,)"),
    (lambda sd: {k: sd[k] for k in list(sd)[:4] + ["1.num_batches_tracked", "2.bias"]},
     "PARAMS.pt's '1.num_batches_tracked' is a torch.int64 tensor"),
], ids=["all", "buffer-for-param", "integer"])
def test_batchnorm_state_dict_as_params_refused(tmp_path, capsys, pick, error):
    model, optimizer = trained(torch.optim.Adam, model=net(torch.nn.BatchNorm1d))
    status, output = to_fused(tmp_path, optimizer.state_dict(), pick(model.state_dict()),
                              "--rule", "Adam")
    refused(capsys, status, output, error, HINT, "not model.state_dict()")


def test_to_torch_params_of_other_sizes_refused(tmp_path, capsys):
    params = {name: torch.zeros(p.numel() + 1) for name, p in reference_params().items()}
    output = tmp_path / "out.pt"
    status = torch_checkpoint.main(["to-torch", str(CHECKPOINTS / "adam.fused.safetensors"),
                                    save(tmp_path, "params.pt", params), str(output)])
    refused(capsys, status, output, "'fc1.weight' has 35 elements in the checkpoint, 36", HINT)


def test_to_torch_missing_scaler_writes_nothing(tmp_path, capsys):
    output = tmp_path / "out.pt"
    status = torch_checkpoint.main(["to-torch", str(CHECKPOINTS / "adam.fused.safetensors"),
                                    save(tmp_path, "params.pt", reference_params()), str(output),
                                    "--scaler", str(tmp_path / "scaler.pt")])
    refused(capsys, status, output, "holds no loss scaler state")
    assert not (tmp_path / "scaler.pt").exists()


# (d) param_names: written back by to-torch from a ParamSet checkpoint, read by to-fused.

def test_param_names_written_by_to_torch_and_read_by_to_fused(tmp_path):
    fused = CHECKPOINTS / "adam.fused.safetensors"
    params_pt = save(tmp_path, "params.pt", reference_params())
    back = tmp_path / "back.pt"
    assert torch_checkpoint.main(["to-torch", str(fused), params_pt, str(back)]) == 0
    state_dict = torch.load(back)
    assert [g["param_names"] for g in state_dict["param_groups"]] == GROUPS

    model = reference_model()
    optimizer = torch.optim.Adam(reference_groups(model, named=True))
    optimizer.load_state_dict(state_dict)
    with safe_open(str(fused), "pt") as f:
        for name, p in model.named_parameters():
            expected = f.get_tensor(f"state.{name}.exp_avg").reshape(p.shape)
            assert torch.equal(optimizer.state[p]["exp_avg"], expected)

    # The loaded optimizer's own state dict, param_names and all, converts to the same file.
    status, again = to_fused(tmp_path, optimizer.state_dict(), reference_params(),
                             "--rule", "Adam")
    assert status == 0
    assert metadata(again) == metadata(fused)
    with safe_open(str(again), "pt") as ours, safe_open(str(fused), "pt") as theirs:
        assert set(ours.keys()) == set(theirs.keys())
        for key in ours.keys():
            assert torch.equal(ours.get_tensor(key), theirs.get_tensor(key))
    train(model, optimizer, 1)  # and it steps


def test_index_named_checkpoint_gets_no_param_names(tmp_path):
    model, optimizer = trained(torch.optim.Adam)
    params = {str(i): p for i, p in enumerate(model.parameters())}  # a single optimizer's names
    status, fused = to_fused(tmp_path, optimizer.state_dict(), params, "--rule", "Adam")
    assert status == 0
    back = tmp_path / "back.pt"
    assert torch_checkpoint.main(["to-torch", str(fused), str(tmp_path / "params.pt"),
                                  str(back)]) == 0
    assert all("param_names" not in g for g in torch.load(back)["param_groups"])


@pytest.mark.parametrize("named", [False, True])
def test_from_fused_keeps_whether_the_optimizer_has_names(named):
    model = reference_model()
    optimizer = torch.optim.Adam(reference_groups(model, named=named))
    torch_checkpoint.from_fused(str(CHECKPOINTS / "adam.fused.safetensors"), optimizer, model)
    groups = optimizer.state_dict()["param_groups"]
    assert [g.get("param_names") for g in groups] == (GROUPS if named else [None, None])
    assert [g["decoupled_weight_decay"] for g in groups] == [False, False]
    train(model, optimizer, 1)


# (e) SGD keeps no step: --step says it; rules that count steps must agree.

def test_sgd_step(tmp_path, capsys):
    model, optimizer = trained(torch.optim.SGD, momentum=0.9)
    params = torch_checkpoint.params_in_order(optimizer, model)
    status, output = to_fused(tmp_path, optimizer.state_dict(), params, "--rule", "SGD",
                              "--step", "3")
    assert status == 0 and "warning" not in capsys.readouterr().err
    written = metadata(output)
    assert written["fused_optim.steps"] == written["fused_optim.applied"] == "3"

    torch_checkpoint.to_fused(optimizer, model, str(tmp_path / "live.safetensors"), step=3)
    assert metadata(tmp_path / "live.safetensors")["fused_optim.steps"] == "3"


def test_sgd_without_step_warns(tmp_path, capsys):
    model, optimizer = trained(torch.optim.SGD, momentum=0.9)
    status, output = to_fused(tmp_path, optimizer.state_dict(),
                              torch_checkpoint.params_in_order(optimizer, model), "--rule", "SGD")
    err = capsys.readouterr().err
    assert status == 0 and "true one is unknown" in err and "--step N" in err
    assert metadata(output)["fused_optim.steps"] == metadata(output)["fused_optim.applied"] == "1"


@pytest.mark.parametrize("make, rule, step, error", [
    (torch.optim.Adam, "Adam", "5", "the state is at step 3, not 5"),
    (lambda params, **kw: torch.optim.SGD(params, momentum=0.9, **kw), "SGD", "0",
     "at least 1 steps taken"),
], ids=["Adam", "SGD-zero"])
def test_disagreeing_step_refused(tmp_path, capsys, make, rule, step, error):
    model, optimizer = trained(make)
    status, output = to_fused(tmp_path, optimizer.state_dict(),
                              torch_checkpoint.params_in_order(optimizer, model),
                              "--rule", rule, "--step", step)
    refused(capsys, status, output, error)


def test_adam_step_that_agrees_accepted(tmp_path):
    model, optimizer = trained(torch.optim.Adam)
    status, output = to_fused(tmp_path, optimizer.state_dict(),
                              torch_checkpoint.params_in_order(optimizer, model),
                              "--rule", "Adam", "--step", "3")
    assert status == 0 and metadata(output)["fused_optim.steps"] == "3"


def test_help_says_what_it_cannot_tell(capsys):
    for command in ("to-fused", "to-torch"):
        with pytest.raises(SystemExit):
            torch_checkpoint.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "two parameters of one shape listed swapped cannot be detected" in text
    assert "PyTorch's SGD has no place for the step count" in text


# (f) flags against the state they determine; flag values carried.

def set_group(key, value):
    def edit(state_dict):
        for group in state_dict["param_groups"]:
            group[key] = value
    return edit


@pytest.mark.parametrize("make, options, edit, rule, error", [
    (torch.optim.Adam, dict(amsgrad=True), set_group("amsgrad", False), "Adam",
     "has 'max_exp_avg_sq', which Adam keeps only with amsgrad=True"),
    (torch.optim.Adam, {}, set_group("amsgrad", True), "Adam",
     "no 'max_exp_avg_sq', which Adam keeps with amsgrad=True: the state fits amsgrad=False"),
    (torch.optim.RMSprop, dict(centered=True), set_group("centered", False), "RMSprop",
     "has 'grad_avg', which RMSprop keeps only with centered=True"),
    (torch.optim.RMSprop, {}, set_group("centered", True), "RMSprop",
     "the state fits centered=False"),
    (torch.optim.RMSprop, dict(momentum=0.5), set_group("momentum", 0.0), "RMSprop",
     "keeps only with momentum > 0, but param_groups[0] has momentum=0.0"),
    (torch.optim.RMSprop, {}, set_group("momentum", 0.5), "RMSprop",
     "the state fits momentum = 0"),
    (torch.optim.SGD, dict(momentum=0.9), set_group("momentum", 0), "SGD",
     "has 'momentum_buffer', which SGD keeps only with momentum > 0"),
    (torch.optim.Adam, {}, None, "SGD", "which SGD has not: --rule Adam fits it"),
    (torch.optim.Adam, {}, None, "RAdam", "amsgrad, which RAdam has not: --rule Adam fits it"),
    (torch.optim.RMSprop, dict(centered=True), None, "Adam", "--rule RMSprop fits it"),
], ids=["amsgrad-off", "amsgrad-on", "centered-off", "centered-on", "momentum-zero",
        "momentum-set", "sgd-momentum-zero", "adam-as-sgd", "adam-as-radam", "rmsprop-as-adam"])
def test_flags_that_contradict_the_state_refused(tmp_path, capsys, make, options, edit, rule,
                                                 error):
    model, optimizer = trained(make, **options)
    state_dict = optimizer.state_dict()
    if edit:
        edit(state_dict)
    status, output = to_fused(tmp_path, state_dict,
                              torch_checkpoint.params_in_order(optimizer, model), "--rule", rule)
    refused(capsys, status, output, error)


def test_exp_avg_under_sgd_named_by_the_state(tmp_path, capsys):
    """A group without another class's hyperparameters: the state tells which rule fits."""
    model, optimizer = trained(torch.optim.Adam)
    state_dict = optimizer.state_dict()
    state_dict["param_groups"] = [{"lr": 0.1, "params": g["params"]}
                                  for g in state_dict["param_groups"]]
    status, output = to_fused(tmp_path, state_dict,
                              torch_checkpoint.params_in_order(optimizer, model), "--rule", "SGD")
    refused(capsys, status, output, "state step, exp_avg, exp_avg_sq, which SGD does not keep: "
            "--rule Adam or AdamW or RAdam fits it")


@pytest.mark.parametrize("make, options, rule, expected", [
    (torch.optim.SGD, dict(momentum=0.9, nesterov=True, maximize=True), "SGD",
     {"nesterov": "true", "maximize": "true", "momentum": "0.9"}),
    (torch.optim.Adam, dict(maximize=True, amsgrad=True), "Adam",
     {"maximize": "true", "amsgrad": "true", "decoupled_weight_decay": "false"}),
    (torch.optim.RMSprop, dict(centered=True, momentum=0.5), "RMSprop",
     {"centered": "true", "momentum": "0.5", "eps_inside_sqrt": "false"}),
], ids=["SGD", "Adam", "RMSprop"])
def test_flag_values_carried(tmp_path, make, options, rule, expected):
    model, optimizer = trained(make, **options)
    status, output = to_fused(tmp_path, optimizer.state_dict(),
                              torch_checkpoint.params_in_order(optimizer, model),
                              "--rule", rule, "--step", "3")
    assert status == 0
    written = metadata(output)
    assert {key: written[f"param_groups.0.{key}"] for key in expected} == expected


def test_own_hyperparameters_go_to_torch_only_at_torchs_value(tmp_path):
    """fused-optim's own hyperparameters, which no torch class has (the schema's `always`
    values beyond the class's hyperparameters), are dropped at PyTorch's behaviour and refused
    at any other."""
    model, optimizer = trained(torch.optim.RMSprop)
    params = torch_checkpoint.params_in_order(optimizer, model)
    status, output = to_fused(tmp_path, optimizer.state_dict(), params, "--rule", "RMSprop",
                              "--step", "3")
    assert status == 0
    state_dict, rule = torch_checkpoint.fused_to_state_dict(str(output), params)
    assert rule == "RMSprop" and "eps_inside_sqrt" not in state_dict["param_groups"][0]
    inside = tmp_path / "inside.safetensors"
    save_file(load_file(str(output)), str(inside),
              {**metadata(output), "param_groups.0.eps_inside_sqrt": "true"})
    with pytest.raises(ValueError, match=r"RMSprop with eps_inside_sqrt=True has no torch.optim "
                                         r"form \(PyTorch's behaviour is eps_inside_sqrt=False\)"):
        torch_checkpoint.fused_to_state_dict(str(inside), params)


def test_tables_come_from_the_librarys_schema(tmp_path):
    """The converter's tables are the schema's: AdamW is Adam's rule with decoupled weight
    decay, and SGD keeps its momentum buffer with momentum on."""
    assert torch_checkpoint.RULES["AdamW"] == ("Adam", {"decoupled_weight_decay": True})
    assert torch_checkpoint.HYPERPARAMETERS["AdamW"]["weight_decay"] == 0.01
    assert torch_checkpoint.SLOTS["SGD"] == {"momentum_buffer": "momentum"}
    assert torch_checkpoint.HOST_STATE["NAdam"] == ["mu_product"]
    broken = json.loads(torch_checkpoint.SCHEMA_PATH.read_text())
    broken["schema_version"] = 0
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="schema version 0"):
        torch_checkpoint._load_schema(path)


@pytest.mark.parametrize("rule, decoupled, warned", [("Adam", "false", True),
                                                     ("AdamW", "true", False)])
def test_keys_of_an_older_pytorch_take_the_default_said(tmp_path, capsys, rule, decoupled,
                                                        warned):
    model, optimizer = trained(torch.optim.Adam)
    state_dict = optimizer.state_dict()
    for group in state_dict["param_groups"]:
        del group["decoupled_weight_decay"], group["maximize"]
    status, output = to_fused(tmp_path, state_dict,
                              torch_checkpoint.params_in_order(optimizer, model), "--rule", rule)
    err = capsys.readouterr().err
    assert status == 0
    assert f"no 'maximize' (a state dict of an older PyTorch?): taking {rule}'s default False" \
        in err
    assert ("no 'decoupled_weight_decay'" in err) == warned
    assert metadata(output)["param_groups.0.decoupled_weight_decay"] == decoupled


# The golden-file workflow of fused-optim/tests/checkpoint_reference.py, into tmp_path.

def test_checkpoint_reference_still_runs(tmp_path, monkeypatch):
    script = REPO / "fused-optim" / "tests" / "checkpoint_reference.py"
    spec = importlib.util.spec_from_file_location("checkpoint_reference", script)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    files = tmp_path / "checkpoints"
    shutil.copytree(CHECKPOINTS, files, ignore=shutil.ignore_patterns("*.torch.safetensors"))
    monkeypatch.setattr(reference, "FILES", files)
    monkeypatch.setattr(reference, "JSON", tmp_path / "interop.json")

    reference.phase_torch()
    for golden in CHECKPOINTS.glob("*.torch.safetensors"):
        made = files / golden.name
        assert metadata(made) == metadata(golden)
        with safe_open(str(made), "pt") as ours, safe_open(str(golden), "pt") as theirs:
            assert set(ours.keys()) == set(theirs.keys())
            for key in ours.keys():
                torch.testing.assert_close(ours.get_tensor(key), theirs.get_tensor(key))

    reference.phase_fused()
    golden = json.loads((CHECKPOINTS.parent / "checkpoint_interop.json").read_text())
    made = json.loads((tmp_path / "interop.json").read_text())
    for case, data in golden["cases"].items():
        ours = made["cases"][case]["from_fused"]["params"]
        for name, values in data["from_fused"]["params"].items():
            torch.testing.assert_close(torch.tensor(ours[name]), torch.tensor(values))


def test_sgd_step_without_momentum_buffers_refused(tmp_path, capsys):
    """With momentum but no buffers the state is at step 0: fused-optim resumed at a later step
    would not start the buffers at the grad as PyTorch's first step does."""
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    params = torch_checkpoint.params_in_order(optimizer, model)
    status, output = to_fused(tmp_path, optimizer.state_dict(), params, "--rule", "SGD",
                              "--step", "3")
    refused(capsys, status, output, "momentum_buffer", "--step 0")


def test_compact_state_decoded_from_the_checkpoints_own_layout():
    """The library's golden checkpoint with 8-bit `exp_avg` (bf16 scales) and 4-bit
    `exp_avg_sq` (two codes per byte, exponent-byte scales), with a NaN and an inf code,
    widens to exactly the f32 state the library's own `expanded()` wrote beside it: the
    converter reads the block size, code tables and widths from the file, not from a copy of
    its own."""
    path = str(CHECKPOINTS / "adam_compact.fused.safetensors")
    tensors, metadata = torch_checkpoint._widened(path)
    assert metadata[torch_checkpoint.BLOCK_KEY] == "32"
    expected = load_file(str(CHECKPOINTS / "adam_compact.expanded.safetensors"))
    state = {name for name in expected if name.startswith("state.")}
    assert state == {name for name in tensors if name.startswith("state.")}
    for name in state:
        got, want = tensors[name], expected[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        bits = torch.int32 if got.dtype == torch.float32 else got.dtype
        assert torch.equal(got.view(bits), want.view(bits)), name
    coded = load_file(path)
    assert coded["state.0.exp_avg"].dtype == torch.uint8
    assert coded["state.0.exp_avg_sq"].numel() == 51  # 101 codes, two per byte
    assert torch.isnan(tensors["state.0.exp_avg"][7])
    assert torch.isinf(tensors["state.0.exp_avg_sq"][7])
    assert torch.isfinite(tensors["state.0.exp_avg"][8:]).all()
