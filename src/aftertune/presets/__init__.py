"""Presets: pipeline specs that reproduce the seed studies' protocols, scaled to a CPU.

Each preset is a YAML file beside this module; `notes` in it says what was
scaled down. `aftertune list presets` lists them, `aftertune run --preset NAME`
runs one, `aftertune run --preset NAME --print-spec` shows it in full.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from aftertune.errors import UserError


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__package__).iterdir()
                  if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    import yaml

    if name not in preset_names():
        raise UserError(f"unknown preset {name!r}; presets: {', '.join(preset_names())} (`aftertune list presets`)")
    return yaml.safe_load(resources.files(__package__).joinpath(f"{name}.yaml").read_text(encoding="utf-8"))


def describe(name: str) -> str:
    return str(load_preset(name).get("notes", "")).strip().split("\n")[0]
