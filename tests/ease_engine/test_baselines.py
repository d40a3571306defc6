"""The four baseline unlearning methods: their pure pieces on constructed inputs, then each
method end to end on the tiny trained federation (client and samples scope)."""

import copy
import json
import math
import shutil

import pytest
import torch
from pydantic import ValidationError

from ease_engine.models.blocks import read_blocks
from ease_engine.unlearning import METHODS, ErasureTarget, UnlearningContext, UnlearningError
from ease_engine.unlearning.base import Cost
from ease_engine.unlearning.federaser import calibrate, calibration_plan, round_spans
from ease_engine.unlearning.pga import project_to_ball, reference_model
from ease_engine.unlearning.sfu import _layer_of, project_off_representations, representation_bases

BASELINES = ("pga", "federaser", "sfu", "multidelete")

# Small budgets so that each run takes a few seconds on 2 shared cores. The ascent's early
# stop is pushed out of reach: the tiny federation is barely above chance level.
FAST = {
    "pga": {"steps": 2, "batch_size": 8, "stop_loss_ratio": 100.0, "repair_rounds": 0},
    "federaser": {"calibration_ratio": 0.25},
    "sfu": {"steps": 2, "batch_size": 8, "stop_loss_ratio": 100.0, "repair_rounds": 0},
    "multidelete": {"steps": 2, "batch_size": 8, "retain_proxy_size": 16},
}


def _norm(values: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in values.values()))


# ---------------------------------------------------------------------- registry and params
def test_all_baselines_are_registered():
    for name in BASELINES:
        spec = METHODS[name]
        assert spec.name == name
        assert set(spec.scopes) == {"client", "samples"}
        spec.params()  # every field has a default


@pytest.mark.parametrize("name", BASELINES)
def test_params_reject_unknown_keys(name):
    with pytest.raises(ValidationError, match="extra"):
        METHODS[name].params(no_such_key=1)
    for field in METHODS[name].params.model_fields.values():
        assert field.description, "every parameter is documented"


# ---------------------------------------------------------------------- FedEraser pieces
def test_calibration_has_the_old_norm_and_the_new_direction():
    old = {"w": torch.tensor([3.0, 4.0, 0.0]), "b": torch.tensor([0.0, 2.0])}
    new = {"w": torch.tensor([0.0, 0.1, 0.0]), "b": torch.tensor([-1.0, 1.0])}
    out, skipped = calibrate(old, new)
    assert skipped == []
    torch.testing.assert_close(out["w"], torch.tensor([0.0, 5.0, 0.0]))
    for name in old:
        assert float(out[name].norm()) == pytest.approx(float(old[name].norm()), rel=1e-6)
        cosine = float(out[name] @ new[name]) / float(out[name].norm() * new[name].norm())
        assert cosine == pytest.approx(1.0, abs=1e-6)


def test_calibration_skips_zero_norm_and_non_float_blocks():
    old = {
        "zero_new": torch.tensor([1.0, 1.0]),
        "zero_old": torch.zeros(2),
        "ints": torch.tensor([1, 2]),
        "absent": torch.ones(2),
        "ok": torch.tensor([2.0, 0.0]),
    }
    new = {
        "zero_new": torch.zeros(2),
        "zero_old": torch.tensor([1.0, 0.0]),
        "ints": torch.tensor([3, 4]),
        "ok": torch.tensor([0.0, 7.0]),
    }
    out, skipped = calibrate(old, new)
    assert sorted(skipped) == ["absent", "ints", "zero_new", "zero_old"]
    assert list(out) == ["ok"]
    torch.testing.assert_close(out["ok"], torch.tensor([0.0, 2.0]))
    assert all(torch.isfinite(v).all() for v in out.values())


def test_round_spans_and_fractional_epochs():
    assert round_spans([0, 4, 8], 10) == [4, 4, 2]
    assert round_spans([0, 1, 2], 3) == [1, 1, 1]
    assert calibration_plan(80, 0.5) == (1, 40)
    assert calibration_plan(80, 1.0) == (1, 80)
    assert calibration_plan(80, 1.5) == (2, 60)  # 2 epochs x 60 pairs = 1.5 x 80
    assert calibration_plan(3, 0.1) == (1, 2)  # a contrastive batch needs two pairs


# ---------------------------------------------------------------------- SFU pieces
def test_parameters_map_to_the_layer_whose_input_they_multiply():
    assert _layer_of("transformer.resblocks.0.mlp.c_fc.weight") == ("transformer.resblocks.0.mlp.c_fc", "weight")
    assert _layer_of("visual.transformer.resblocks.1.attn.in_proj_weight") == (
        "visual.transformer.resblocks.1.attn", "weight")
    assert _layer_of("transformer.resblocks.0.attn.parametrizations.in_proj_weight.0.lora_A") == (
        "transformer.resblocks.0.attn", "lora_A")
    assert _layer_of("transformer.resblocks.0.mlp.c_proj.parametrizations.weight.0.lora_B")[1] == "lora_B"
    for held in ("transformer.resblocks.0.attn.out_proj.weight", "visual.proj", "ln_final.weight",
                 "transformer.resblocks.0.mlp.c_fc.bias", "parametrizations.text_projection.0.lora_A"):
        assert _layer_of(held) is None, held


def test_projection_keeps_retained_inputs_outputs_and_holds_the_rest():
    model = torch.nn.Module()
    model.mlp = torch.nn.Module()
    model.mlp.c_fc = torch.nn.Linear(4, 3)
    model.token_embedding = torch.nn.Embedding(5, 2)
    gen = torch.Generator().manual_seed(0)
    model.mlp.c_fc.weight.grad = torch.randn(3, 4, generator=gen)
    model.mlp.c_fc.bias.grad = torch.ones(3)
    model.token_embedding.weight.grad = torch.ones(5, 2)
    basis = torch.linalg.qr(torch.randn(4, 2, generator=gen))[0]
    project_off_representations(model, {"mlp.c_fc": basis}, held_rows=[0, 3])
    torch.testing.assert_close(model.mlp.c_fc.weight.grad @ basis, torch.zeros(3, 2), atol=1e-6, rtol=0)
    assert float(model.mlp.c_fc.weight.grad.norm()) > 0.1  # the rest of the gradient stays
    assert torch.equal(model.mlp.c_fc.bias.grad, torch.zeros(3))  # no representation: held fixed
    assert torch.equal(model.token_embedding.weight.grad[[0, 3]], torch.zeros(2, 2))
    assert torch.equal(model.token_embedding.weight.grad[[1, 2, 4]], torch.ones(3, 2))


# ---------------------------------------------------------------------- PGA pieces
def test_ball_projection_keeps_weights_within_delta():
    gen = torch.Generator().manual_seed(1)
    center = {"a": torch.randn(5, generator=gen), "b": torch.randn(3, generator=gen)}
    far = {name: v + 10 * torch.randn(v.shape, generator=gen) for name, v in center.items()}
    projected, moved = project_to_ball(far, center, 0.5)
    assert moved
    distance = _norm({n: projected[n] - center[n] for n in center})
    assert distance == pytest.approx(0.5, rel=1e-5)
    # the nearest point of the ball: same direction from the center
    d_far = torch.cat([far[n] - center[n] for n in center])
    d_proj = torch.cat([projected[n] - center[n] for n in center])
    torch.testing.assert_close(d_proj, d_far * (0.5 / float(d_far.norm())), atol=1e-5, rtol=0)
    near = {name: v + 0.01 for name, v in center.items()}
    kept, moved = project_to_ball(near, center, 0.5)
    assert not moved
    for name in near:
        torch.testing.assert_close(kept[name], near[name])


def test_reference_is_the_papers_formula_for_one_equal_weight_round():
    gen = torch.Generator().manual_seed(2)
    k_clients, f = 4, 1
    theta0 = torch.randn(6, generator=gen)
    deltas = {k: torch.randn(6, generator=gen) for k in range(k_clients)}
    p = 1 / k_clients
    theta = theta0 + sum(p * d for d in deltas.values())
    theta_f = theta0 + deltas[f]  # the forget client's local model
    contributions = {k: {"w": p * d} for k, d in deltas.items()}
    w_ref = reference_model({"w": theta}, contributions, f, p)
    torch.testing.assert_close(w_ref["w"], (k_clients * theta - theta_f) / (k_clients - 1), atol=1e-5, rtol=0)
    subtract = reference_model({"w": theta}, contributions, f, p, mode="subtract")
    torch.testing.assert_close(subtract["w"], theta - p * deltas[f])
    with pytest.raises(UnlearningError, match="two clients"):
        reference_model({"w": theta}, contributions, f, 1.0)


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def context(tiny_version):
    _, out = tiny_version
    return UnlearningContext.load(out)


def _target(context, scope: str) -> ErasureTarget:
    if scope == "client":
        return ErasureTarget(0)
    items = context.setup.client_items(1)[:3]
    return ErasureTarget(1, tuple(context.setup.train.pair_ids[i] for i in items))


def _check_forget_only_blocks_stay_at_the_start(context, after):
    """Token rows that only client 0's captions use are never moved by the retained clients' replay."""
    from ease_engine.federation.update_store import load_rounds

    ledger = context.ledger
    exclusive = [
        name
        for name in context.original_values
        if float(ledger.client(0).contribution[name].norm()) > 0
        and all(float(ledger.client(k).contribution[name].norm()) == 0 for k in ledger.clients if k != 0)
    ]
    assert exclusive, "the tiny federation gives client 0 words of its own"
    start = load_rounds(context.version_dir / "updates")[0].global_start
    for name in exclusive:
        torch.testing.assert_close(after[name], start[name])
        assert not torch.equal(after[name], context.original_values[name])


@pytest.mark.parametrize("scope", ["client", "samples"])
@pytest.mark.parametrize("name", BASELINES)
def test_method_changes_the_model_and_reports_costs(context, name, scope):
    spec = METHODS[name]
    target = _target(context, scope)
    params = dict(FAST[name])
    if name == "pga" and scope == "client":
        params["repair_rounds"] = 1  # exercise the FedAvg repair once
    outcome = spec.unlearn(context, target, spec.params(**params))
    after = read_blocks(outcome.bundle.model, context.setup.blocks)
    original = context.original_values
    assert all(torch.isfinite(v).all() for v in after.values())
    change = _norm({n: after[n] - original[n] for n in original})
    assert change > 1e-6, f"{name} returned the original model"
    # the context's model is the original, untouched
    still = read_blocks(context.setup.bundle.model, context.setup.blocks)
    assert all(torch.equal(still[n], original[n]) for n in original)
    cost = outcome.cost
    assert cost.client_samples > 0 and cost.bytes_exchanged > 0 and cost.rounds > 0
    assert cost.bytes_exchanged % (2 * 4 * context.numbers_per_model()) == 0  # whole models down and up
    assert outcome.wall_seconds > 0
    json.dumps(outcome.details)  # goes into reports as is

    details = outcome.details
    if name == "pga":
        assert details["ascent"]["steps"] == 2
        assert details["distance_to_reference"] <= details["radius"] * (1 + 1e-4)
        assert details["radius"] > 0
        if scope == "client":  # one ascent round with client 0, one repair round with the others
            retained = len(context.retain_items(target))
            assert cost.rounds == 2 and cost.client_samples == 2 * 8 + retained
            assert len(details["repair"]) == 1
    if name == "federaser":
        stored = details["stored_rounds"]
        assert stored == [0, 1, 2] and cost.rounds == len(stored)
        participants = len(context.retained_clients(target))
        assert cost.bytes_exchanged == len(stored) * 2 * participants * context.numbers_per_model() * 4
        if scope == "client":
            _check_forget_only_blocks_stay_at_the_start(context, after)
    if name == "multidelete":
        assert cost.server_samples > 0 and cost.rounds == 2
    if name == "sfu" and scope == "client":  # no repair: the retained inputs' outputs did not move
        bases, held = representation_bases(context, target, spec.params(**params), Cost())
        weights = {n: p for n, p in outcome.bundle.model.named_parameters()}
        before = dict(context.setup.bundle.model.named_parameters())
        checked = 0
        for param_name in weights:
            layer = _layer_of(param_name)
            if layer is None or layer[0] not in bases:
                continue
            moved = (weights[param_name] - before[param_name]).detach()
            torch.testing.assert_close(moved @ bases[layer[0]], torch.zeros(moved.shape[0], bases[layer[0]].shape[1]),
                                       atol=1e-5, rtol=0)
            checked += 1
        assert checked and torch.equal(weights["token_embedding.weight"][held], before["token_embedding.weight"][held])


def test_federaser_without_stored_updates_says_which_key_to_set(context, tmp_path):
    version = tmp_path / "v"
    shutil.copytree(context.version_dir, version, ignore=shutil.ignore_patterns("updates"))
    bare = UnlearningContext.load(version)
    spec = METHODS["federaser"]
    with pytest.raises(UnlearningError, match="store_updates_every"):
        spec.unlearn(bare, ErasureTarget(0), spec.params())
    (version / "updates").mkdir()  # present but empty
    with pytest.raises(UnlearningError, match="store_updates_every"):
        spec.unlearn(bare, ErasureTarget(0), spec.params())


@pytest.mark.parametrize("name", ["pga", "ease"])
def test_ledger_methods_fail_loudly_without_a_ledger(context, name):
    bare = copy.copy(context)
    bare.ledger = None
    with pytest.raises(UnlearningError, match="ledger"):
        METHODS[name].unlearn(bare, ErasureTarget(0), METHODS[name].params())


def test_sfu_needs_no_ledger_only_the_retained_clients_representations(context):
    bare = copy.copy(context)
    bare.ledger = None
    outcome = METHODS["sfu"].unlearn(bare, ErasureTarget(0), METHODS["sfu"].params(**FAST["sfu"]))
    assert outcome.details["subspace"]["layers"] > 0


def test_pga_samples_scope_with_an_absolute_radius_needs_no_ledger(context):
    bare = copy.copy(context)
    bare.ledger = None
    params = METHODS["pga"].params(**{**FAST["pga"], "sample_radius": 0.01})
    outcome = METHODS["pga"].unlearn(bare, _target(context, "samples"), params)
    after = read_blocks(outcome.bundle.model, context.setup.blocks)
    distance = _norm({n: after[n] - context.original_values[n] for n in after})
    assert 0 < distance <= 0.01 * (1 + 1e-4)
