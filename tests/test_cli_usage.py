"""Usage errors through the installed console entry point (a subprocess, as a user runs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parent.parent / "src")


def _aftertune(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("aftertune", path=os.path.dirname(sys.executable))
    assert exe, "the aftertune console script is not installed next to this python"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize(("args", "names"), [
    (["generate", "--no-such-flag"], "--no-such-flag"),
    (["generate", "-p", "x.jsonl"], "--model"),
    (["runs", "list", "--limit", "abc"], "--limit"),
    (["generate", "-m", "x", "-p", "x.jsonl", "--max-new-tokens", "many"], "--max-new-tokens"),
    (["no-such-command"], "no-such-command"),
])
def test_usage_errors_print_one_line_and_exit_2(tmp_path, args, names):
    res = _aftertune(args, tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("aftertune: error:") and names in lines[0] and "--help" in lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    assert not any(tmp_path.iterdir()), "a usage error left files behind"



@pytest.mark.parametrize("command", [[], ["generate"], ["audit"], ["tune"]])
def test_help_says_remote_code_is_refused_and_how_to_opt_in(tmp_path, command):
    res = _aftertune([*command, "--help"], tmp_path)
    text = " ".join(res.stdout.split())
    assert res.returncode == 0 and "trust_remote_code" in text and "AFTERTUNE_TRUST_REMOTE_CODE=1" in text


def test_torchao_import_noise_is_dropped_and_its_other_warnings_kept(caplog):
    """Every command imported torchao, which logged one warning per CUDA-only extension a CPU cannot load."""
    import logging

    from aftertune.quiet import quiet_import_noise

    quiet_import_noise()
    quiet_import_noise()  # idempotent: one filter per logger
    ao = logging.getLogger("torchao")
    with caplog.at_level(logging.WARNING):
        ao.warning("Failed to load /venv/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: no CUDA")
        logging.getLogger("torch.utils._pytree").warning(
            "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile")
        ao.warning("int4 weight-only quantization needs group sizes dividing in_features")
    assert [r.getMessage() for r in caplog.records] == [
        "int4 weight-only quantization needs group sizes dividing in_features"]
    assert sum(type(f).__name__ == "_ImportNoise" for f in ao.filters) == 1


def test_no_progress_silences_the_libraries_bars_too(tmp_path):
    """`--no-progress` reached aftertune's bars only; transformers still drew its GGUF conversion bar (tqdm, which
    reads its switch when first imported: the CLI sets it before, as this fresh interpreter does)."""
    code = ("import io, os, sys\n"
            "from aftertune.quiet import library_progress_bars\n"
            "with library_progress_bars(sys.argv[1] == 'on'):\n"
            "    from tqdm.auto import tqdm\n"
            "    buf = io.StringIO()\n"
            "    for _ in tqdm(range(3), file=buf, desc='Converting and de-quantizing GGUF tensors'):\n"
            "        pass\n"
            "print(len(buf.getvalue()), os.environ.get('TQDM_DISABLE'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    drawn = {}
    for mode in ("on", "off"):
        res = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, check=True)
        drawn[mode] = res.stdout.split()
    assert drawn["off"] == ["0", "None"] and int(drawn["on"][0]) > 0  # restored after the block
