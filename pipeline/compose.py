"""Hydra at the edge: overrides -> composed config -> CellConfig.

This is the only module that talks to Hydra's compose API; callers get dataclasses.
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.config import CellConfig, ConfigError

CONF_DIR = Path(os.environ.get("LLM_BENCH_CONF", Path(__file__).resolve().parents[1] / "conf"))


def compose_dict(overrides: list[str], conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """The composed config as plain containers; Hydra's own errors become ConfigError."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot compose the config with overrides {list(overrides)}: {exc}") from exc
    values = OmegaConf.to_container(cfg, resolve=True)
    values.pop("hydra", None)
    return values


def compose_cell(overrides: list[str], conf_dir: Path = CONF_DIR) -> CellConfig:
    return CellConfig.from_dict(compose_dict(overrides, conf_dir))


@cache
def _file_digest(path: Path, mtime_ns: int, size: int) -> bytes:  # keyed on mtime/size: an edit is seen
    return hashlib.sha256(path.read_bytes()).digest()


def conf_digest(engine: str, model: str, precision: str, conf_dir: Path = CONF_DIR) -> str:
    """A fingerprint of the conf files a cell is composed from: edit one, and the cells that
    used it are measured again on the next run."""
    conf_dir = Path(conf_dir)
    files = [
        conf_dir / "config.yaml",
        conf_dir / "engine" / f"{engine}.yaml",
        conf_dir / "model" / f"{model}.yaml",
        conf_dir / "precision" / f"{precision}.yaml",
    ]
    files += sorted((conf_dir / "workload").glob("*.yaml")) + sorted((conf_dir / "hardware").glob("*.yaml"))
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(path.name.encode() + _file_digest(path, stat.st_mtime_ns, stat.st_size))
    return digest.hexdigest()[:16]


def to_override(key: str, value: Any) -> str:
    """A `key=value` Hydra override for a plain value (as YAML or --config gives it)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str):
        # Quote anything Hydra's override grammar would otherwise interpret.
        plain = value.replace("_", "").replace("-", "").replace(".", "").replace("/", "")
        text = value if plain.isalnum() else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    else:
        raise ConfigError(f"override {key}: only plain values are supported, got {type(value).__name__}")
    return f"{key}={text}"


def check_overrides(overrides: list[str], conf_dir: Path = CONF_DIR) -> CellConfig:
    """Compose the default cell with these overrides; a mistyped key names the valid ones."""
    try:
        return compose_cell(overrides, conf_dir)
    except ConfigError:
        base = compose_dict([], conf_dir)
        for override in overrides:
            key = override.split("=", 1)[0]
            if key.startswith(("+", "~")) or "@" in key:
                continue
            node: Any = base
            for depth, part in enumerate(key.split(".")):
                if not isinstance(node, dict):
                    break
                if part not in node:
                    where = ".".join(key.split(".")[:depth]) or "the top level"
                    valid = ", ".join(sorted(node))
                    raise ConfigError(
                        f"unknown setting {key!r}: {where} has no {part!r}; valid there: {valid}"
                    ) from None
                node = node[part]
        raise
