"""Model presets shipped as data files (planner/frontends/presets/*.json)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from planner.frontends.spec import ModelSpec


def _preset_files() -> dict[str, resources.abc.Traversable]:
    folder = resources.files("planner.frontends") / "presets"
    return {entry.name.removesuffix(".json"): entry for entry in folder.iterdir() if entry.name.endswith(".json")}


def preset_names() -> tuple[str, ...]:
    """Names of all shipped presets, sorted."""
    return tuple(sorted(_preset_files()))


@lru_cache(maxsize=None)
def load_preset(name: str) -> ModelSpec:
    """The preset called `name` (case-insensitive)."""
    files = _preset_files()
    key = name.lower()
    if key not in files:
        raise ValueError(f"unknown model {name!r}; presets are: {', '.join(sorted(files))} "
                         "(or give a path to a config.json)")
    return ModelSpec.from_dict(json.loads(files[key].read_text()))
