"""The safety LoRA that `safemerge` merges into a task adapter: trained once per base and adapter shape, cached.

SafeMERGE's safety model is a LoRA tuned from the same aligned model on
harmful requests paired with refusals; the authors report that 100 to 2,500
safety examples suffice and that it is reused across tasks. Here it is
aftertune's own recipe on the built-in `refusals` set (train split; its
prompts are excluded from every evaluation suite), with the task adapter's
rank, alpha, dropout and target modules so that the two merge layer by layer.
`SAFETY_TRAINING` keeps it CPU-cheap: 16 steps of 4 examples (64 refusals,
fp32, seed 0).

The adapter is written to `$AFTERTUNE_HOME/safety-adapters/<hash of the base's
fingerprint and the training config>/` (`artefacts.materialise`: trained in a
temporary folder and renamed whole, so an interrupted training leaves
nothing), with `safety-tune.json` holding the config and the training metrics.
Any later `safemerge` of an adapter of the same shape on the same base reuses it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.fileio import write_json_atomic
from aftertune.sources.base import ModelRef

SAFETY_ADAPTER_VERSION = "1"  # bump when a change here changes the trained weights
SAFETY_TUNE_JSON = "safety-tune.json"
SAFETY_TRAINING: dict[str, Any] = {
    "data": "refusals", "method": "lora", "objective": "sft", "max_steps": 16, "batch_size": 4, "max_length": 256,
    "learning_rate": 5e-4, "limit": 64, "eval_limit": 8, "checkpoint_every": 16, "precision": "fp32", "seed": 0,
}


def safety_training_config(task: Any, base: ModelRef) -> dict[str, Any]:
    """The tune config of the safety adapter for a task adapter (`lora_layers.LoraAdapter`) on `base`."""
    targets = task.config.get("target_modules")
    if not isinstance(targets, list) or not targets:
        raise UserError(f"safemerge: the tuned adapter {task.path} names its target modules as {targets!r}, not a "
                        "list; train a safety adapter with the same layers yourself and pass safety=DIR")
    alpha = task.config.get("lora_alpha", task.rank)
    if float(alpha) != int(alpha):
        raise UserError(f"safemerge: the tuned adapter's lora_alpha {alpha} is not whole; pass safety=DIR")
    lora = {"r": task.rank, "alpha": int(alpha), "dropout": float(task.config.get("lora_dropout") or 0.0),
            "target_modules": sorted(set(targets))}
    return {**SAFETY_TRAINING, "lora": lora, "model": str(base.path)}


def safety_adapter(base: ModelRef, task: Any, *, progress: bool = True) -> Path:
    """The folder of the safety adapter for `task`'s shape on `base`, trained on first use."""
    from aftertune.recipes import parse_config, tune
    from aftertune.sources import fingerprint
    from aftertune.variants.artefacts import materialise

    cfg = safety_training_config(task, base)
    key = {"base": fingerprint(base), "v": SAFETY_ADAPTER_VERSION,
           "training": parse_config(cfg, where="safety adapter").model_dump(mode="json", exclude={"model", "out"})}

    def train(out: Path) -> None:
        work = out / ".train"
        result = tune(parse_config({**cfg, "out": str(work)}, where="safety adapter"), progress=progress,
                      label="safety")
        for f in Path(result.model_ref).iterdir():
            shutil.move(str(f), out / f.name)
        keep = ("train_loss", "eval_loss_start", "eval_loss", "global_step", "runtime_s", "peak_rss_bytes")
        write_json_atomic(out / SAFETY_TUNE_JSON, {"config": result.config, "base_fingerprint": key["base"],
                                                   "metrics": {k: result.metrics.get(k) for k in keep}})
        shutil.rmtree(work)

    return materialise("safety-adapters", key, train, what="the safety adapter (safemerge)")
