"""Evaluate a model on a data split: embeddings, Recall@K, and the concept probe."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ease_engine.data.dataset import CaptionDataset
from ease_engine.data.scenes import caption_naming, probe_captions
from ease_engine.evaluation.probe import probe_accuracy
from ease_engine.evaluation.retrieval import per_image_recall, recall_at_k
from ease_engine.evaluation.untrained_words import beaten_share, stand_in_words
from ease_engine.models.factory import ClipBundle


@torch.no_grad()
def encode_images(
    bundle: ClipBundle, dataset: CaptionDataset, items=None, batch_size: int = 256, device: str = "cpu"
) -> torch.Tensor:
    """L2-normalised image embeddings (N, D) of ``items`` (default: all)."""
    model = bundle.model
    was_training = model.training
    model.eval()
    items = np.arange(len(dataset)) if items is None else np.asarray(items, dtype=np.int64)
    out = [
        F.normalize(model.encode_image(bundle.image_batch(dataset, items[i : i + batch_size], device)), dim=-1)
        for i in range(0, len(items), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out).float().cpu() if out else torch.zeros(0, 1)


@torch.no_grad()
def encode_tokens(bundle: ClipBundle, tokens: torch.Tensor, batch_size: int = 512, device: str = "cpu") -> torch.Tensor:
    """L2-normalised text embeddings (M, D) of tokenized captions (M, context)."""
    model = bundle.model
    was_training = model.training
    model.eval()
    out = [
        F.normalize(model.encode_text(tokens[i : i + batch_size].to(device)), dim=-1)
        for i in range(0, len(tokens), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out).float().cpu() if out else torch.zeros(0, 1)


def encode_texts(bundle: ClipBundle, texts: list[str], batch_size: int = 512, device: str = "cpu") -> torch.Tensor:
    """L2-normalised text embeddings (M, D)."""
    return encode_tokens(bundle, bundle.tokenize(texts) if texts else torch.zeros(0, 1), batch_size, device)


def caption_tokens(bundle: ClipBundle, dataset: CaptionDataset) -> torch.Tensor:
    """Every caption of ``dataset`` tokenized, in ``caption_owner`` order: for a split measured again and again
    (tokenizing is most of the cost of encoding a few thousand short captions with a small model). Each distinct
    text is tokenized once, as ``EncodedCaptions.build`` does for training."""
    return bundle.tokenize_each_once(dataset.caption_owner()[0])


def retrieval_metrics(bundle: ClipBundle, dataset: CaptionDataset, device: str = "cpu",
                      tokens: torch.Tensor | None = None) -> dict[str, float]:
    """Recall@1/5/10 both directions on ``dataset`` (an image matches any of its captions); ``tokens``: its
    captions as ``caption_tokens`` gives them with this bundle's tokenizer, when the caller keeps them."""
    metrics = recall_at_k(*_retrieval_embeddings(bundle, dataset, device, tokens))
    metrics["n_images"] = len(dataset)
    return metrics


def retrieval_shares(bundle: ClipBundle, dataset: CaptionDataset, device: str = "cpu",
                     tokens: torch.Tensor | None = None) -> np.ndarray:
    """Each image's share of the mean of ``retrieval_metrics``' six recalls (``retrieval.per_image_recall``), in
    percent: their mean is that mean, their spread over images its sampling error."""
    return per_image_recall(*_retrieval_embeddings(bundle, dataset, device, tokens))


def _retrieval_embeddings(bundle: ClipBundle, dataset: CaptionDataset, device: str,
                          tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Image embeddings, caption embeddings and each caption's image, for the retrieval measures."""
    if len(dataset) == 0:
        raise ValueError(f"cannot evaluate retrieval on an empty split ({dataset.name})")
    _, owner = dataset.caption_owner()
    if tokens is not None and len(tokens) != len(owner):
        raise ValueError(f"{len(tokens)} tokenized captions given for the {len(owner)} captions of {dataset.name}: "
                         f"pass caption_tokens(bundle, dataset) of this split")
    image_emb = encode_images(bundle, dataset, device=device)
    text_emb = encode_tokens(bundle, caption_tokens(bundle, dataset) if tokens is None else tokens, device=device)
    return image_emb, text_emb, owner


def concept_items(dataset: CaptionDataset, attribute: str, value: str) -> np.ndarray:
    return np.asarray([i for i, c in enumerate(dataset.concepts) if value in c.get(attribute, ())], dtype=np.int64)


def concept_probe(
    bundle: ClipBundle, dataset: CaptionDataset, attribute: str, value: str, device: str = "cpu",
    ranked_images: int = 300,
) -> dict[str, float]:
    """For every image showing ``attribute = value``: is its true caption preferred over the
    captions that differ only in that attribute (e.g. the same scene with purple replaced by
    each other colour)? Returns accuracy in percent, the chance level and the image count.

    And, where the value is one word and the tokenizer has a vocabulary, where the value's word ranks
    among untrained words (``ease_engine.evaluation.untrained_words``): on a seeded sample of at most
    ``ranked_images`` of the images, the mean cosine similarity of each image to its caption naming the
    word, for the value and for each stand-in; ``beats_untrained`` is the share (percent) of the
    ``n_untrained`` stand-ins the value outscores. Needs a data set with scene structure (``scenes``).
    """
    if dataset.structure is None:
        raise ValueError(f"data set {dataset.name!r} has no scene structure; the concept probe needs `scenes`")
    items = concept_items(dataset, attribute, value)
    if len(items) == 0:
        raise ValueError(f"no image in {dataset.name!r} has {attribute} = {value!r}")
    candidates, truth = [], []
    for i in items:
        caps, true_index = probe_captions(dataset.structure[i], attribute, value)
        candidates.append(caps)
        truth.append(true_index)
    flat = [c for caps in candidates for c in caps]
    text_emb = encode_texts(bundle, flat, device=device)
    per_image = len(candidates[0])
    image_emb = encode_images(bundle, dataset, items, device=device)
    accuracy = probe_accuracy(image_emb, text_emb.view(len(items), per_image, -1), np.asarray(truth))
    result = {"accuracy": accuracy, "chance": 100.0 / per_image, "n_images": len(items)}
    words = stand_in_words(bundle.tokenizer) if len(value.split()) == 1 else []
    if words:
        rng = np.random.default_rng(len(items))
        sample = np.sort(rng.choice(len(items), size=min(ranked_images, len(items)), replace=False))
        named = [caption_naming(dataset.structure[items[i]], attribute, value, word)
                 for word in [value, *words] for i in sample]
        text = encode_texts(bundle, named, device=device).view(len(words) + 1, len(sample), -1)
        scores = (text * image_emb[sample][None]).sum(-1).mean(1)  # (1 + K,) mean similarity per word
        result.update(beats_untrained=beaten_share(int((scores[1:] < scores[0]).sum()), len(words)),
                      n_untrained=len(words))
    return result
