"""Federation configs shipped with the engine (TOML, typed by ``ease_engine.federation.config``)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = CONFIG_DIR / "default.toml"  # the embedded default federation
