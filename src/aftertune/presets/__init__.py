"""Presets: pipeline specs that reproduce the seed studies' protocols, scaled to a CPU.

Each preset is a YAML file beside this module, registered under its file name
(the loop below is the registration: adding a preset is adding a file); the
first line of its `notes` is its description and says what was scaled down.
`aftertune list presets` lists them, `aftertune run --preset NAME` runs one,
`aftertune run --preset NAME --print-spec` shows it in full.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from aftertune.registry import Registry

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PRESETS: Registry[Traversable] = Registry("preset")


def _read(path: Traversable) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


for _path in sorted(resources.files(__package__).iterdir(), key=lambda p: p.name):
    if _path.name.endswith(".yaml"):
        PRESETS.add(
            _path.name.removesuffix(".yaml"), _path, str(_read(_path).get("notes", "")).strip().split("\n")[0]
        )


def preset_names() -> list[str]:
    return PRESETS.names()


def load_preset(name: str) -> dict[str, Any]:
    return _read(PRESETS.get(name))
