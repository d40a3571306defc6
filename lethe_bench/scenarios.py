"""The benchmark's scenarios: a federation config, what is erased, and the concept a request would name.

Each is a config in ``ease_engine/configs/``; seeds vary the training and the initialisation
(``training.seed``, ``model.init_seed``), never the data, so every seed erases the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ease_engine.configs import CONFIG_DIR
from ease_engine.federation.config import FederationConfig, load_config


@dataclass(frozen=True)
class Scenario:
    name: str
    config_file: str
    client: int = 0
    sample_pairs: int | None = None  # samples scope: this many pairs of ``client`` (a data subject)
    concept: tuple[str, str] | None = None  # what a request names (the concept-probe gate)
    needs_pretrained: bool = False
    summary: str = ""
    backbone: str | None = None  # a local weights file in place of the config's pretrained backbone
    # the seeds `lethe bench` runs by default: three, more where the retrain itself spreads by more than the bars
    seeds: tuple[int, ...] = (0, 1, 2)

    @property
    def scope(self) -> str:
        return "client" if self.sample_pairs is None else "samples"

    def config(self, seed: int, quick: bool = False) -> FederationConfig:
        config = load_config(CONFIG_DIR / self.config_file)
        config.training.seed = seed
        config.model.init_seed = seed
        config.training.threads = 1  # reproducible and fastest on a shared 2-core machine
        if self.backbone is not None:
            config.model.pretrained = self.backbone
        if quick:
            config.data.scenes.n_train = min(config.data.scenes.n_train, 600)
            config.data.scenes.n_test = min(config.data.scenes.n_test, 120)
            config.training.rounds = min(config.training.rounds, 4)
            config.partition.n_shared_per_owner = min(config.partition.n_shared_per_owner, 20)
        return config


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("exclusive", "default.toml", concept=("colour", "purple"),
             summary="client 0 alone holds every purple image (the embedded default federation)"),
    Scenario("shared-concept", "shared-concept.toml", concept=("colour", "purple"),
             summary="client 0 holds 70% of the purple images, client 1 the other 30%"),
    Scenario("dirichlet", "dirichlet.toml", client=4,
             summary="non-IID by shape (Dir(0.1)), no exclusive concept; client 4, the largest (120 epochs: "
                     "memorised; 35% of each client held out)"),
    Scenario("pretrained-lora", "pretrained-lora.toml", concept=("colour", "purple"), needs_pretrained=True,
             summary="LoRA on both towers of a backbone pretrained without purple; client 0 alone holds purple"),
    Scenario("samples", "samples.toml", client=1, sample_pairs=150,
             summary="a data subject: 150 pairs of client 1 (three IID clients, 120 epochs: memorised; 35% of each "
                     "client held out)"),
    # six seeds: the retrain's retained Recall@1 is 24.8/29.2 on seeds 0-2 and 9.6/10.5 on 3-5 (docs/ease.md,
    # "Learning the retained pairs too"), so three seeds say more about the seeds than about the methods
    Scenario("real-images", "real-images.toml", seeds=(0, 1, 2, 3, 4, 5),
             summary="emoji renders with Unicode names, one category per client; client 0 (Animals & Nature)"),
]}
