import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ease_engine.models.blocks import (
    TOKEN_EMBEDDING,
    add_to_blocks,
    read_blocks,
    trainable_blocks,
    write_blocks,
)
from ease_engine.models.config import ModelConfig
from ease_engine.models.factory import ModelError, build_model
from ease_engine.models.lora import LoRA, merged_state_dict
from ease_engine.models.version_io import load_version, save_version


def _outputs(bundle, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, bundle.image_size, bundle.image_size, generator=g)
    texts = bundle.tokenize(["a red circle", "a blue square in the top left", "a small green star"])
    bundle.model.eval()
    with torch.no_grad():
        return bundle.model(images, texts)[:2]


def test_unknown_architecture_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown open_clip architecture"):
        build_model(ModelConfig(architecture="ViT-Nope"))
    with pytest.raises(ModelError, match="not found"):
        build_model(ModelConfig(pretrained=str(tmp_path / "missing.safetensors")))
    with pytest.raises(ModelError, match="neither a local weights file nor an open_clip pretrained tag"):
        build_model(ModelConfig(pretrained="no-such-tag"))
    with pytest.raises(ValueError, match="extra"):
        ModelConfig.model_validate({"architecture": "lethe-tiny", "lora_rnak": 4})


def test_vit_b_32_is_known_without_downloading():
    from ease_engine.models.factory import architecture_config

    cfg = architecture_config("ViT-B-32")
    assert cfg["vision_cfg"]["patch_size"] == 32 and cfg["embed_dim"] == 512


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_pretrained_weights_from_a_local_file(tmp_path, suffix):
    source = build_model(ModelConfig(init_seed=7))
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = build_model(ModelConfig(init_seed=0, pretrained=str(path)))
    fresh = build_model(ModelConfig(init_seed=0))
    for a, b in zip(_outputs(source), _outputs(loaded), strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(_outputs(fresh)[0], _outputs(source)[0])


def test_lora_starts_as_the_base_model_and_trains_only_adapters():
    base = build_model(ModelConfig(init_seed=3))
    lora = build_model(ModelConfig(init_seed=3, mode="lora", lora_rank=4))
    for a, b in zip(_outputs(base), _outputs(lora), strict=True):
        torch.testing.assert_close(a, b)
    trainable = [n for n, p in lora.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    adapted = {n.split(".parametrizations.")[0] for n in trainable if ".parametrizations." in n}
    assert any(n.startswith("visual.") for n in adapted) and any(n.startswith("transformer.") for n in adapted)
    assert any("attn" in n for n in adapted), "attention in_proj weights must be adapted too"
    n_lora = sum(isinstance(m, LoRA) for m in lora.model.modules())
    assert n_lora == len({n.rsplit(".", 2)[0] for n in trainable})


def test_blocks_restrict_the_token_embedding_to_used_rows():
    bundle = build_model(ModelConfig())
    rows = [5, 17, 320]
    blocks = trainable_blocks(bundle.model, rows)
    emb = [b for b in blocks if b.param == TOKEN_EMBEDDING]
    assert [b.rows for b in emb] == [(5,), (17,), (320,)] and all(b.shape == (1, 64) for b in emb)
    assert [b.name for b in emb] == [f"{TOKEN_EMBEDDING}[5]", f"{TOKEN_EMBEDDING}[17]", f"{TOKEN_EMBEDDING}[320]"]
    before = bundle.model.token_embedding.weight.detach().clone()
    values = read_blocks(bundle.model, blocks)
    add_to_blocks(bundle.model, blocks, {b.name: torch.ones(64) for b in emb}, scale=2.0)
    after = bundle.model.token_embedding.weight.detach()
    changed = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == rows
    write_blocks(bundle.model, blocks, values)
    torch.testing.assert_close(bundle.model.token_embedding.weight.detach(), before, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_version_round_trip_is_exact_and_open_clip_can_load_it(tmp_path, mode):
    import open_clip

    bundle = build_model(ModelConfig(mode=mode, lora_rank=4))
    with torch.no_grad():
        for p in bundle.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    directory = save_version(bundle, tmp_path / "v1", {"note": "test"})
    loaded, metadata = load_version(directory)
    assert metadata == {"note": "test"}
    for a, b in zip(_outputs(bundle), _outputs(loaded), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    plain = open_clip.create_model(f"local-dir:{directory}")
    plain.eval()
    images = torch.randn(2, 3, 48, 48)
    texts = bundle.tokenize(["a red circle", "a blue square"])
    with torch.no_grad():
        torch.testing.assert_close(plain(images, texts)[0], bundle.model(images, texts)[0], rtol=1e-5, atol=1e-6)
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in directory.iterdir()), "nothing is pickled"
    with pytest.raises(FileExistsError):
        save_version(bundle, directory)


def test_merged_state_dict_folds_adapters():
    bundle = build_model(ModelConfig(mode="lora", lora_rank=2))
    with torch.no_grad():
        for name, p in bundle.model.named_parameters():
            if name.endswith("lora_B"):
                p.fill_(0.01)
    merged = merged_state_dict(bundle.model)
    assert not any("parametrizations" in k for k in merged)
    w = merged["visual.transformer.resblocks.0.mlp.c_fc.weight"]
    mod = bundle.model.visual.transformer.resblocks[0].mlp.c_fc
    adapter = mod.parametrizations.weight[0]
    expected = mod.parametrizations.weight.original + adapter.scale * adapter.lora_B @ adapter.lora_A
    torch.testing.assert_close(w, expected.detach())
    assert not np.allclose(w.numpy(), mod.parametrizations.weight.original.detach().numpy())


def test_pixels_to_tensor_normalises_and_resizes():
    bundle = build_model(ModelConfig())
    pixels = np.full((2, 32, 32, 3), 255, dtype=np.uint8)
    x = bundle.pixels_to_tensor(pixels)
    assert x.shape == (2, 3, 48, 48)
    expected = (1 - torch.tensor(bundle.mean)) / torch.tensor(bundle.std)
    torch.testing.assert_close(x[0, :, 10, 10], expected)


def test_tokenize_each_once_equals_tokenize_and_tokenizes_each_distinct_text_once(monkeypatch):
    bundle = build_model(ModelConfig())
    texts = ["a blue square", "a red circle", "a blue square", "a small green star", "a red circle"]
    expected = bundle.tokenize(texts)
    seen = []
    tokenize = type(bundle).tokenize
    monkeypatch.setattr(type(bundle), "tokenize", lambda self, batch: seen.append(list(batch)) or tokenize(self, batch))
    tokens = bundle.tokenize_each_once(texts)
    assert torch.equal(tokens, expected)  # same rows, in the order given
    assert len(seen) == 1 and sorted(seen[0]) == sorted(set(texts))  # one call, each text once
