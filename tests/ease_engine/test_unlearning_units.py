"""EASE's pieces and the ledger's exclusive contribution on constructed inputs where the answer is known."""

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from ease_engine.federation.exclusive import ExclusiveContribution
from ease_engine.federation.ledger import Ledger, LedgerConfig
from ease_engine.models.blocks import ParameterBlock
from ease_engine.unlearning.ease_displacement import quantile_matching_loss
from ease_engine.unlearning.ease_projection import StepProjection


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
    for mode, expected_w, expected_row in [
        ("off", torch.tensor([[0.0, 2.0], [3.0, 4.0]]), torch.tensor([1.0, 0.0])),
        ("onto", torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([0.0, 1.0])),
    ]:
        model = _model()  # the start: every value 0
        projection = StepProjection(model, blocks, {"w": e_w, blocks[1].name: e_row}, mode)
        with torch.no_grad():
            model.w.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
            model.emb[1] = torch.tensor([1.0, 1.0])
        projection.apply()
        torch.testing.assert_close(model.w.detach(), expected_w)
        torch.testing.assert_close(model.emb.detach()[1], expected_row)


def test_rows_outside_the_plan_are_put_back():
    model = _model()
    projection = StepProjection(model, [ParameterBlock("emb", (1, 2), (2,))], {}, "off")
    with torch.no_grad():
        model.emb += 1.0  # the optimiser moved every row of the shared embedding
    projection.apply()
    assert torch.equal(model.emb.detach()[[0, 1, 3]], torch.zeros(3, 2)) and torch.equal(
        model.emb.detach()[2], torch.ones(2))


def _projected_block_by_block(model, blocks, directions, mode, start, fixed) -> None:
    """The reference: the constraint written out per block, one block at a time (rows outside the plan put back
    first)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, rows in {b.param: [r for c in blocks if c.param == b.param for r in c.rows]
                           for b in blocks if b.rows is not None}.items():
            keep = torch.ones(params[name].shape[0], dtype=torch.bool)
            keep[rows] = False
            params[name][keep] = fixed[name][keep]
        for block in blocks:
            param = params[block.param]
            value = (param[list(block.rows)] if block.rows is not None else param).reshape(-1)
            moved = value - start[block.name]
            e = directions.get(block.name)
            if e is None or e.shape[1] == 0:
                kept = torch.zeros_like(moved) if mode == "onto" else moved
            else:
                e = e.to(moved)
                inside = e @ (e.T @ moved)
                kept = inside if mode == "onto" else moved - inside
            new = (start[block.name] + kept).reshape((len(block.rows), *param.shape[1:]) if block.rows else block.shape)
            if block.rows is None:
                param.copy_(new)
            else:
                param[list(block.rows)] = new


def _federation_like(dtype, gen):
    """A matrix, a bias, two embeddings (30 one-row blocks on one, rows in any order, blocks of two rows, a second
    embedding with one-row blocks) and a 3-D parameter split by rows; 0 to 3 directions per block."""
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.randn(6, 5, generator=gen, dtype=dtype))
    model.b = torch.nn.Parameter(torch.randn(5, generator=gen, dtype=dtype))
    model.emb = torch.nn.Parameter(torch.randn(50, 8, generator=gen, dtype=dtype))
    model.pos = torch.nn.Parameter(torch.randn(12, 4, generator=gen, dtype=dtype))
    model.cube = torch.nn.Parameter(torch.randn(6, 2, 3, generator=gen, dtype=dtype))
    blocks = [ParameterBlock("w", (6, 5)), ParameterBlock("b", (5,))]
    blocks += [ParameterBlock("emb", (1, 8), (row,)) for row in range(0, 30)]
    blocks += [ParameterBlock("emb", (2, 8), rows) for rows in ((32, 33), (41, 40))]
    blocks += [ParameterBlock("pos", (1, 4), (row,)) for row in (1, 5, 7)]
    blocks += [ParameterBlock("cube", (2, 2, 3), rows) for rows in ((0, 1), (4, 3))]
    directions = {}
    for i, block in enumerate(blocks):
        q = i % 4  # 0 columns: no directions
        if q:
            directions[block.name] = torch.linalg.qr(torch.randn(block.numel, q, generator=gen))[0]  # float32
    return model, blocks, directions


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["off", "onto"])
def test_the_batched_projection_equals_the_block_by_block_formula(mode, dtype):
    """Three steps of random moves: after each, the batched projection lands where the per-block formula does,
    and the embedding rows no block covers are back at their start."""
    gen = torch.Generator().manual_seed(7)
    model, blocks, directions = _federation_like(dtype, gen)
    params = dict(model.named_parameters())
    start = {b.name: (params[b.param][list(b.rows)] if b.rows else params[b.param]).detach().reshape(-1).clone()
             for b in blocks}
    fixed = {name: params[name].detach().clone() for name in ("emb", "pos", "cube")}
    reference = torch.nn.Module()
    for name, p in model.named_parameters():
        setattr(reference, name, torch.nn.Parameter(p.detach().clone()))
    projection = StepProjection(model, blocks, directions, mode)
    for _ in range(3):
        step = {name: torch.randn(p.shape, generator=gen, dtype=dtype) for name, p in model.named_parameters()}
        with torch.no_grad():
            for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
                p += step[name]  # the optimiser's step: every row moves
                q += step[name]
        projection.apply()
        _projected_block_by_block(reference, blocks, directions, mode, start, fixed)
        for (name, got), want in zip(model.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-5, msg=name)
    outside = [r for r in range(50) if r not in set(range(30)) | {32, 33, 40, 41}]
    assert torch.equal(model.emb.detach()[outside], fixed["emb"][outside])
    assert torch.equal(model.pos.detach()[[0, 2, 3, 4, 6, 8, 9, 10, 11]], fixed["pos"][[0, 2, 3, 4, 6, 8, 9, 10, 11]])
    assert any(b.name not in directions for b in blocks), "the case of a block without directions must be covered"


@pytest.mark.parametrize("blocks", [
    [ParameterBlock("emb", (1, 2), (1,)), ParameterBlock("emb", (2, 2), (1, 2))],
    [ParameterBlock("emb", (4, 2)), ParameterBlock("emb", (1, 2), (3,))],
    [ParameterBlock("emb", (1, 2), (3,)), ParameterBlock("emb", (4, 2))],
])
def test_overlapping_blocks_are_refused(blocks):
    """Where blocks overlap the per-block formula depends on their order: the projection refuses them."""
    with pytest.raises(ValueError, match="overlaps another block"):
        StepProjection(_model(), blocks, {}, "off")


def test_the_projection_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown projection mode"):
        StepProjection(_model(), [], {}, "sideways")


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

    from ease_engine.unlearning.ease_displacement import retain_term

    images, tokens = torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), torch.randn(
        6, 5, generator=torch.Generator().manual_seed(2))
    parent, moved = _TwoTowers(0), _TwoTowers(1)
    with torch.no_grad():
        anchored = (parent.image(images), parent.text(tokens))
    assert float(retain_term(parent, images, tokens, "anchor", anchored)) == 0.0
    with torch.no_grad():
        mse = (float(((moved.image(images) - parent.image(images)) ** 2).mean())
               + float(((moved.text(tokens) - parent.text(tokens)) ** 2).mean()))
        a = torch.nn.functional.normalize(moved.image(images), dim=-1).double().numpy()
        b = torch.nn.functional.normalize(moved.text(tokens), dim=-1).double().numpy()
    logits = 10.0 * a @ b.T
    i2t = -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(axis=1)))
    t2i = -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(axis=0)))
    at_anchor = retain_term(moved, images, tokens, "anchor", anchored).item()
    learned = retain_term(moved, images, tokens, "contrastive").item()
    assert at_anchor == pytest.approx(mse, rel=1e-5) and at_anchor > 0
    assert learned == pytest.approx(0.5 * (i2t + t2i), rel=1e-5)
    assert retain_term(moved, images, tokens, "both", anchored).item() == pytest.approx(at_anchor + learned, rel=1e-5)
    retain_term(moved, images, tokens, "contrastive").backward()
    assert moved.logit_scale.grad is None  # the temperature is the parent's, not a knob of the repair
    with pytest.raises(ValueError, match="unknown retain term"):
        retain_term(moved, images, tokens, "hinge")
    with pytest.raises(ValueError, match="needs the parent's embeddings"):
        retain_term(moved, images, tokens, "anchor")


def test_the_anchor_embeddings_are_the_parents_each_pair_encoded_once():
    """Over overlapping batches the cached embeddings equal a fresh forward pass of the parent, and each image
    and each caption row goes through the parent once; a changed caption row of the same image is encoded anew."""
    import types

    from ease_engine.unlearning.ease_displacement import AnchorEmbeddings

    parent = _TwoTowers(0)
    calls = {"image": 0, "text": 0}
    image_forward, text_forward = parent.encode_image, parent.encode_text

    def counted(kind, forward):
        def encode(x):
            calls[kind] += len(x)
            return forward(x)
        return encode

    parent.encode_image, parent.encode_text = counted("image", image_forward), counted("text", text_forward)
    gen = torch.Generator().manual_seed(3)
    all_images, all_tokens = torch.randn(10, 3, generator=gen), torch.randn(20, 5, generator=gen)
    embeddings = AnchorEmbeddings(types.SimpleNamespace(model=parent))
    batches = [(np.array([0, 1, 2, 3]), torch.tensor([0, 2, 4, 6])), (np.array([2, 3, 4]), torch.tensor([4, 7, 8])),
               (np.array([4, 0]), torch.tensor([8, 0]))]
    for items, rows in batches:
        got_images, got_texts = embeddings(items, rows, all_images[items], all_tokens[rows])
        with torch.no_grad():
            torch.testing.assert_close(got_images, image_forward(all_images[items]))
            torch.testing.assert_close(got_texts, text_forward(all_tokens[rows]))
    assert calls == {"image": 5, "text": 6}  # images 0-4 and caption rows 0, 2, 4, 6, 7, 8, each once (item 3's
    # second caption, row 7, is encoded although its image was cached)


def test_the_repair_refuses_the_model_itself_as_its_anchor():
    """The anchor's embeddings are kept for the whole repair: an anchor that is the model being repaired would
    move under them."""
    import types

    from ease_engine.unlearning.ease_displacement import displace

    bundle = types.SimpleNamespace(model=_TwoTowers(0))
    with pytest.raises(ValueError, match="the anchor must be a copy of the parent"):
        displace(bundle, bundle, types.SimpleNamespace(device="cpu"), None, None, None, None)
