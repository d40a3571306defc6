"""EASE's pieces and the ledger's exclusive contribution on constructed inputs where the answer is known."""

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from ease_engine.federation.exclusive import ExclusiveContribution
from ease_engine.federation.ledger import Ledger, LedgerConfig
from ease_engine.models.blocks import ParameterBlock
from ease_engine.unlearning.ease_displacement import (
    DisplacementPlan,
    _restore_rows_outside,
    project_step,
    quantile_matching_loss,
)


def _ledger(updates: dict[int, dict[str, list[torch.Tensor]]], blocks, initial) -> Ledger:
    ledger = Ledger(blocks, sorted(updates), LedgerConfig(rank_cap=4, energy=1.0), "fp", initial=initial)
    for client, per_block in updates.items():
        rounds = len(next(iter(per_block.values())))
        for t in range(rounds):
            ledger.record(client, t, {name: per_block[name][t] for name in per_block})
    return ledger


def test_exclusive_contribution_is_the_part_outside_the_retained_span():
    """Client 0 moves w along e1 and e3, the others only along e1 and e2: x_0 = its e3 component exactly;
    a block only client 0 moved is wholly exclusive; the residual is 1 for the parent, 0 for theta_0."""
    d = 4
    e = torch.eye(d)
    blocks = [ParameterBlock("w", (d,)), ParameterBlock("row", (2,))]
    initial = {"w": torch.full((d,), 0.5), "row": torch.zeros(2)}
    updates = {
        0: {"w": [e[0] + 2 * e[2], e[0] + e[2]], "row": [torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.0])]},
        1: {"w": [e[0] + e[1], 2 * e[1]], "row": [torch.zeros(2), torch.zeros(2)]},
        2: {"w": [e[1], e[0]], "row": [torch.zeros(2), torch.zeros(2)]},
    }
    ledger = _ledger(updates, blocks, initial)
    ex = ExclusiveContribution.from_ledger(ledger, 0, energy=1.0)
    torch.testing.assert_close(ex.parts["w"].float(), 3 * e[2], atol=1e-6, rtol=0)
    assert ex.wholly_exclusive == {"row"} and ex.share["row"] == 1.0
    torch.testing.assert_close(ex.parts["row"].float(), torch.tensor([1.5, 0.0]))
    parent = {name: initial[name] + sum(ledger.records[k].contribution[name] for k in ledger.clients)
              for name in initial}
    assert ex.residual(parent)["all"] == pytest.approx(1.0)
    assert ex.residual(initial)["all"] == pytest.approx(0.0, abs=1e-6)  # float32 contributions
    erased = {name: parent[name] - ex.parts[name].float() for name in parent}
    assert ex.residual(erased) == {"all": pytest.approx(0.0, abs=1e-6), "wholly_exclusive": pytest.approx(0.0),
                                   "entangled": pytest.approx(0.0, abs=1e-6)}  # float32 weights
    # more rounds of the others (along e1, e2) leave it where it was: the residual cannot be passed by moving
    moved = {name: value + (e[0] + e[1] if name == "w" else 0) for name, value in parent.items()}
    assert ex.residual(moved)["all"] == pytest.approx(1.0)


def test_the_retained_clients_own_weight_along_x_f_is_not_counted():
    """Client 1 also moves along client 0's exclusive direction a little (rank-limited bases miss it): the
    parent's residual is still exactly 1, because the ledger knows what client 1 put there."""
    d = 4
    e = torch.eye(d)
    blocks = [ParameterBlock("w", (d,))]
    initial = {"w": torch.zeros(d)}
    updates = {0: {"w": [e[2], e[2]]}, 1: {"w": [e[0] + 0.3 * e[2], e[0]]}, 2: {"w": [e[1], e[1]]}}
    ledger = _ledger(updates, blocks, initial)
    ledger.config.rank_cap = 1
    ex = ExclusiveContribution.from_ledger(ledger, 0, energy=0.5)  # a truncated support: x_0 keeps some e0
    parent = {"w": sum(ledger.records[k].contribution["w"] for k in ledger.clients)}
    assert ex.others["w"] != 0.0
    assert ex.residual(parent)["all"] == pytest.approx(1.0, abs=1e-6)


def test_a_ratio_keeps_only_blocks_that_stand_out_of_the_retained_clients():
    d = 6
    e = torch.eye(d)
    blocks = [ParameterBlock("w", (d,))]
    # every client has an idiosyncratic direction of the same size: nobody stands out
    updates = {k: {"w": [e[k] + e[5], e[k]]} for k in range(3)}
    ledger = _ledger(updates, blocks, {"w": torch.zeros(d)})
    assert ExclusiveContribution.from_ledger(ledger, 0, energy=1.0, ratio=1.5).parts == {}
    assert set(ExclusiveContribution.from_ledger(ledger, 0, energy=1.0, ratio=0).parts) == {"w"}
    # the others mostly move a common direction: client 0's own direction now stands out of their noise
    big = {0: {"w": [10 * e[0] + e[5], 10 * e[0]]}, 1: {"w": [5 * e[5] + 0.5 * e[1], 5 * e[5]]},
           2: {"w": [5 * e[5] + 0.5 * e[2], 5 * e[5]]}}
    ledger = _ledger(big, blocks, {"w": torch.zeros(d)})
    assert set(ExclusiveContribution.from_ledger(ledger, 0, energy=1.0, ratio=1.5).parts) == {"w"}


def test_a_debited_ledger_holds_no_exclusive_part_of_the_client_and_leaves_the_parent_alone():
    """After ``debited(0, x_0)`` client 0's contribution is its shared part only: nothing exclusive is left to
    excise a second time (float32 rounding is not an exclusive block); the parent's records are untouched,
    and recording more rounds into the debited copy does not reach the parent."""
    d = 4
    e = torch.eye(d)
    blocks = [ParameterBlock("w", (d,))]
    updates = {0: {"w": [e[0] + 2 * e[2], e[0] + e[2]]}, 1: {"w": [e[0] + e[1], 2 * e[1]]}, 2: {"w": [e[1], e[0]]}}
    ledger = _ledger(updates, blocks, {"w": torch.zeros(d)})
    before = ledger.client(0).contribution["w"].clone()
    ex = ExclusiveContribution.from_ledger(ledger, 0, energy=1.0)
    child = ledger.debited(0, ex.parts)
    torch.testing.assert_close(child.client(0).contribution["w"], 2 * e[0], atol=1e-6, rtol=0)
    assert ExclusiveContribution.from_ledger(child, 0, energy=1.0).parts == {}
    assert torch.equal(ledger.client(0).contribution["w"], before)
    child.record(0, 2, {"w": e[3]})
    assert ledger.client(0).rounds == [0, 1] and ledger.client(0).basis["w"].shape[1] == 2
    assert child.without_client(0).clients == [1, 2] and ledger.clients == [0, 1, 2]


def test_gallery_contrastive_loss_is_the_per_pair_symmetric_infonce():
    """Against a brute-force reference: -log softmax of the pair's own similarity among [own, gallery], both
    ways, averaged."""
    from ease_engine.federation.training import gallery_contrastive_loss

    rng = np.random.default_rng(0)
    img, txt, g_img, g_txt = (torch.from_numpy(rng.normal(size=shape)).float()
                              for shape in [(5, 8), (5, 8), (7, 8), (7, 8)])
    scale = 10.0

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    a, b, ga, gb = (unit(x.numpy().astype(np.float64)) for x in (img, txt, g_img, g_txt))
    expected = []
    for i in range(5):
        own = scale * a[i] @ b[i]
        i2t = np.concatenate([[own], scale * gb @ a[i]])
        t2i = np.concatenate([[own], scale * ga @ b[i]])
        expected.append(0.5 * (-(own - np.log(np.exp(i2t).sum())) - (own - np.log(np.exp(t2i).sum()))))
    np.testing.assert_allclose(gallery_contrastive_loss(img, txt, g_img, g_txt, scale).numpy(), expected,
                               rtol=1e-5)


def test_quantile_matching_is_the_squared_wasserstein_distance():
    rng = np.random.default_rng(0)
    batch = torch.tensor(rng.normal(0.5, 0.1, 64), dtype=torch.float32)
    target = torch.sort(torch.tensor(rng.normal(0.2, 0.1, 64), dtype=torch.float32)).values
    loss = float(quantile_matching_loss(batch, target))
    expected = float(((torch.sort(batch).values - target) ** 2).mean())
    assert loss == pytest.approx(expected, rel=1e-5)
    assert wasserstein_distance(batch.numpy(), target.numpy()) <= np.sqrt(loss) + 1e-6
    assert float(quantile_matching_loss(target, target)) == pytest.approx(0.0, abs=1e-12)
    assert float(quantile_matching_loss(target - 1.0, target, one_sided=True)) == 0.0  # below: no penalty


def _model():
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(2, 2))
    model.emb = torch.nn.Parameter(torch.zeros(4, 2))
    return model


def test_each_step_is_projected_off_or_onto_the_block_directions():
    blocks = [ParameterBlock("w", (2, 2)), ParameterBlock("emb", (1, 2), (1,))]
    e_w = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    e_row = torch.tensor([[0.0], [1.0]])
    start = {"w": torch.zeros(4), blocks[1].name: torch.zeros(2)}
    for mode, expected_w, expected_row in [
        ("off", torch.tensor([[0.0, 2.0], [3.0, 4.0]]), torch.tensor([1.0, 0.0])),
        ("onto", torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([0.0, 1.0])),
    ]:
        model = _model()
        with torch.no_grad():
            model.w.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
            model.emb[1] = torch.tensor([1.0, 1.0])
        plan = DisplacementPlan(blocks, {"w": e_w, blocks[1].name: e_row}, mode, np.zeros(0), np.zeros(0), None, None)
        project_step(model, plan, start)
        torch.testing.assert_close(model.w.detach(), expected_w)
        torch.testing.assert_close(model.emb.detach()[1], expected_row)


def test_rows_outside_the_plan_are_put_back():
    model = _model()
    fixed = {"emb": model.emb.detach().clone()}
    with torch.no_grad():
        model.emb += 1.0  # the optimiser moved every row of the shared embedding
    plan = DisplacementPlan([ParameterBlock("emb", (1, 2), (2,))], {}, "off", np.zeros(0), np.zeros(0), None, None)
    _restore_rows_outside(model, plan, fixed)
    assert torch.equal(model.emb.detach()[[0, 1, 3]], torch.zeros(3, 2)) and torch.equal(
        model.emb.detach()[2], torch.ones(2))


class _TwoTowers(torch.nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.image, self.text = torch.nn.Linear(3, 4), torch.nn.Linear(5, 4)
        self.logit_scale = torch.nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))

    def encode_image(self, x):
        return self.image(x)

    def encode_text(self, x):
        return self.text(x)


def test_the_retain_term_anchors_to_the_parent_learns_the_pairs_or_both():
    """anchor: the squared distance of both towers' embeddings to the parent's (0 at the parent itself);
    contrastive: the symmetric InfoNCE of the batch (brute force); both: their sum."""
    import types

    from ease_engine.unlearning.ease_displacement import retain_term

    images, tokens = torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), torch.randn(
        6, 5, generator=torch.Generator().manual_seed(2))
    parent, moved = _TwoTowers(0), _TwoTowers(1)
    anchor = types.SimpleNamespace(model=parent)
    assert float(retain_term(parent, anchor, images, tokens, "anchor")) == 0.0
    with torch.no_grad():
        mse = (float(((moved.image(images) - parent.image(images)) ** 2).mean())
               + float(((moved.text(tokens) - parent.text(tokens)) ** 2).mean()))
        a = torch.nn.functional.normalize(moved.image(images), dim=-1).double().numpy()
        b = torch.nn.functional.normalize(moved.text(tokens), dim=-1).double().numpy()
    logits = 10.0 * a @ b.T
    i2t = -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(axis=1)))
    t2i = -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(axis=0)))
    anchored = retain_term(moved, anchor, images, tokens, "anchor").item()
    learned = retain_term(moved, anchor, images, tokens, "contrastive").item()
    assert anchored == pytest.approx(mse, rel=1e-5) and anchored > 0
    assert learned == pytest.approx(0.5 * (i2t + t2i), rel=1e-5)
    assert retain_term(moved, anchor, images, tokens, "both").item() == pytest.approx(anchored + learned, rel=1e-5)
    retain_term(moved, anchor, images, tokens, "contrastive").backward()
    assert moved.logit_scale.grad is None  # the temperature is the parent's, not a knob of the repair
    with pytest.raises(ValueError, match="unknown retain term"):
        retain_term(moved, anchor, images, tokens, "hinge")
