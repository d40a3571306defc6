"""Unlearning methods: one module each, registered here by name (a plain dict)."""

from ease_engine.unlearning import ease, federaser, finetune, multidelete, noop, perturb, pga, retrain, sfu
from ease_engine.unlearning.base import (
    Cost,
    ErasureTarget,
    MethodSpec,
    UnlearningContext,
    UnlearningError,
    UnlearningOutcome,
)

METHODS: dict[str, MethodSpec] = {
    "ease": MethodSpec("ease", ease.EaseParams, ease.unlearn, "EASE: excision, bilateral displacement, Forget Lock"),
    "retrain": MethodSpec("retrain", retrain.RetrainParams, retrain.unlearn, "FedAvg from scratch without the data"),
    "finetune": MethodSpec("finetune", finetune.FinetuneParams, finetune.unlearn, "more FedAvg rounds on retained"),
    "pga": MethodSpec("pga", pga.PgaParams, pga.unlearn, "projected gradient ascent near a reference (Halimi 2022)"),
    "federaser": MethodSpec("federaser", federaser.FedEraserParams, federaser.unlearn, "calibrated replay (Liu 2021)"),
    "sfu": MethodSpec("sfu", sfu.SfuParams, sfu.unlearn, "ascent orthogonal to retained subspace (Li 2023)"),
    "multidelete": MethodSpec(
        "multidelete", multidelete.MultiDeleteParams, multidelete.unlearn, "decoupling + retention (Cheng 2024)"
    ),
    "noop": MethodSpec("noop", noop.NoopParams, noop.unlearn, "negative control: the parent unchanged"),
    "perturb": MethodSpec("perturb", perturb.PerturbParams, perturb.unlearn, "negative control: parent + noise"),
}


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise UnlearningError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}") from None


__all__ = [
    "METHODS",
    "Cost",
    "ErasureTarget",
    "MethodSpec",
    "UnlearningContext",
    "UnlearningError",
    "UnlearningOutcome",
    "get_method",
]
