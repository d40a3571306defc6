"""What the unlearning benchmark runs on every scenario and seed: the methods (EASE's ablations as rows of
their own) and the production-gate cases (negative controls beside EASE and the retrain reference)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    label: str
    method: str
    params: dict = field(default_factory=dict)
    scopes: tuple[str, ...] = ("client", "samples")  # the erasure scopes where the row means something


ROWS: list[Row] = [
    Row("finetune", "finetune"),
    Row("pga", "pga"),
    Row("federaser", "federaser"),
    Row("sfu", "sfu"),
    Row("multidelete", "multidelete"),
    # a subject's erasure resets no row: the rest of the client's pairs use the same words
    Row("multidelete + exclusive-row reset", "multidelete", {"reset_wholly_exclusive": True}, scopes=("client",)),
    Row("ease", "ease"),
    Row("ease w/o excision", "ease", {"excise": False}),
    Row("ease w/o displacement", "ease", {"displace": False}),
    # the earlier samples-scope design: nothing excised, the displacement inside the subject's gradient directions
    Row("ease subject-gradient basis", "ease", {"sample_excision": "none"}, scopes=("samples",)),
    Row("ease image tower only", "ease", {"towers": "image"}),
    Row("ease text tower only", "ease", {"towers": "text"}),
]

# PGA without its ball and with a large step: a model destroyed by over-ascent (a negative control)
OVER_ASCENT = {"radius_fraction": 100.0, "steps": 200, "lr": 0.05, "stop_loss_ratio": 100.0, "repair_rounds": 0,
               "max_grad_norm": None}
# the production-gate cases: expected "fail" for the first four, "pass" for the last two
GATE_CASES: dict[str, Row | None] = {
    "noop": Row("noop", "noop"),
    "finetune": None,  # the finetune row
    "perturb": Row("perturb", "perturb"),
    "over_ascent": Row("over_ascent", "pga", OVER_ASCENT),
    "retrain": None,  # the retrain reference itself, submitted as a candidate
    "ease": None,  # the ease row
}
EXPECTED = {"noop": "fail", "finetune": "fail", "perturb": "fail", "over_ascent": "fail", "retrain": "pass",
            "ease": "pass"}
# cases that are no negative control in a scope, and why (the gate-case table marks them)
NOT_A_CONTROL = {("samples", "finetune"): "in samples scope more rounds on the retained data do forget the subject "
                                          "(forget Recall@1 and membership AUC fall to the retrain reference's level)"}


def rows_for(scope: str) -> list[Row]:
    return [row for row in ROWS if scope in row.scopes]
