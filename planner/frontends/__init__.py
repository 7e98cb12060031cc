"""Frontends: model name, config.json or paddle.nn.Layer -> ModelSpec."""

from __future__ import annotations

from pathlib import Path

from planner.frontends.hf_config import load_config, spec_from_config
from planner.frontends.presets import load_preset, preset_names
from planner.frontends.spec import MLASpec, ModelSpec, MoESpec


def load_model(name_or_path: str) -> ModelSpec:
    """A preset by name, or a config.json path (anything ending in .json or an existing directory)."""
    if name_or_path.endswith(".json") or Path(name_or_path).is_dir():
        return load_config(name_or_path)
    return load_preset(name_or_path)


__all__ = ["ModelSpec", "MoESpec", "MLASpec", "load_model", "load_config", "load_preset", "preset_names",
           "spec_from_config"]
