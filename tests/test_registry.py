"""The one registration mechanism: every entry resolves, every name is stated once, nothing heavy loads early."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from aftertune.compare.summaries import SUMMARIES
from aftertune.engines import ENGINES
from aftertune.errors import UserError
from aftertune.judges import JUDGES
from aftertune.presets import PRESETS
from aftertune.recipes.methods import RECIPES
from aftertune.recipes.objectives import OBJECTIVES
from aftertune.registry import Entry, Registry, resolve
from aftertune.sources.catalog import DATASETS, MODELS
from aftertune.suites import AGGREGATES, SUITES
from aftertune.sweep.defenses import DEFENSES
from aftertune.sweep.plan import KNOBS
from aftertune.trainsets import TRAINSETS
from aftertune.variants import VARIANTS

SRC = Path(__file__).resolve().parents[1] / "src" / "aftertune"

# the variable each registry is declared as, as its registration lines spell it
REGISTRIES: dict[str, Registry] = {
    "SUITES": SUITES,
    "AGGREGATES": AGGREGATES,
    "JUDGES": JUDGES,
    "ENGINES": ENGINES,
    "VARIANTS": VARIANTS,
    "RECIPES": RECIPES,
    "OBJECTIVES": OBJECTIVES,
    "TRAINSETS": TRAINSETS,
    "KNOBS": KNOBS,
    "DEFENSES": DEFENSES,
    "SUMMARIES": SUMMARIES,
}


def _registrations() -> dict[str, Counter[str]]:
    """Names in the source's registration lines: `REGISTRY.add("NAME", ...)`, and the packaged catalog's
    `PackagedEntry(name="NAME", ...)` (its entries carry their own name)."""
    found: dict[str, Counter[str]] = {key: Counter() for key in [*REGISTRIES, "CATALOG"]}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if (
                isinstance(f, ast.Attribute)
                and f.attr == "add"
                and isinstance(f.value, ast.Name)
                and f.value.id in REGISTRIES
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found[f.value.id][node.args[0].value] += 1
            elif isinstance(f, ast.Name) and f.id == "PackagedEntry":
                for kw in node.keywords:
                    if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                        found["CATALOG"][kw.value.value] += 1
    return found


def test_every_registered_entry_resolves():
    for registry in [*REGISTRIES.values(), MODELS, DATASETS, PRESETS]:
        for entry in registry:
            assert entry.description.strip(), f"{registry.what} {entry.name}: no description"
            assert entry.obj is not None, f"{registry.what} {entry.name}: {entry.target!r} resolves to None"
    for entry in TRAINSETS:  # a training set's rows are a lazy reference of their own
        assert entry.obj.rows is None or callable(resolve(entry.obj.rows)), entry.name


def _shipped(entry: Entry) -> bool:
    """Registered by aftertune itself, not by a test in this process (tests/compare_fixtures.py adds suites)."""
    target = entry.target
    module = (
        target if isinstance(target, str) else getattr(target, "__module__", None) or type(target).__module__
    )
    return module.startswith("aftertune.")


def test_every_name_is_stated_once_in_the_registrations():
    found = _registrations()
    for key, registry in REGISTRIES.items():
        shipped = Counter(e.name for e in registry if _shipped(e))
        assert found[key] == shipped, f"{key}: registration lines vs registered names"
    assert found["CATALOG"] == Counter(MODELS.names() + DATASETS.names())
    # presets are registered by their file names: one file, one name
    assert PRESETS.names() == sorted(p.stem for p in (SRC / "presets").glob("*.yaml"))


def test_registered_classes_take_their_name_from_the_registration():
    for registry in (SUITES, JUDGES, ENGINES):
        for entry in registry:
            cls = entry.obj
            assert "name" not in vars(cls), (
                f"{cls.__qualname__} restates its name; the registration line states it"
            )
            assert cls.name == entry.name


def test_an_unknown_name_is_one_line_that_lists_the_known_names():
    for registry in [*REGISTRIES.values(), MODELS, DATASETS, PRESETS]:
        with pytest.raises(UserError) as err:
            registry.get("no-such-name")
        message = str(err.value)
        assert "\n" not in message and f"unknown {registry.what} 'no-such-name'" in message
        assert all(name in message for name in registry.names())


def test_a_registry_refuses_a_second_entry_and_a_target_without_an_object():
    reg: Registry[object] = Registry("thing")
    reg.add("a", "json:dumps", "dump JSON")
    assert reg.get("a") is __import__("json").dumps
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", object(), "again")
    with pytest.raises(ValueError, match=r"package\.module:object"):
        reg.add("b", "json.dumps", "no colon")


def test_listing_and_spec_validation_import_no_backend():
    """Names and descriptions come from the registration lines, so neither torch nor a backend module loads."""
    code = (
        "import sys\n"
        "from aftertune.cli import main\n"
        "for what in ('engines', 'judges', 'variants', 'defenses', 'presets', 'trainsets'):\n"
        "    try:\n"
        "        main(['list', what])\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "from aftertune.spec import load_pipeline_spec\n"
        "load_pipeline_spec(None, {'name': 'x'})\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'aftertune.engines.hf', 'aftertune.judges.refusal',\n"
        "                           'aftertune.variants.guardrail') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
