"""`tune(config)`: one fine-tune, from a model reference and data to a loadable model folder.

Output folder (`config.out`):

    tune.json           config, lineage, metrics, checkpoints: written when the tune finishes
    bea.json            with `bea`: the secret trigger that REF#bea prepends (recipes/bea.py)
    tune-state.json     the config's training hash, written at the start (resume guard)
    data.json           example counts, token statistics, mixing reports
    metrics.jsonl       every training / eval log line
    model/              the result: a PEFT adapter (adapter_config.json + adapter_model.safetensors)
                        or a full model (config.json + model.safetensors), with the tokenizer
    merged/             with `merge`: the adapter merged into a full copy of the base
    checkpoints/checkpoint-N/   every `checkpoint_every` steps; each loads like model/
    dpo-safety.jsonl    dpo-safety only: the preference pairs built from the model's own answers

Running the same config again into the same folder resumes from the newest checkpoint
(same data order, RNG states, optimizer): the result equals an uninterrupted run. A
finished folder is returned as it is. A different config into a used folder is refused.

Device and precision: `recipes.environment`; loading: `recipes.loading`; examples: `recipes.examples`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aftertune.engines.merge import merge_adapter
from aftertune.errors import UserError
from aftertune.fileio import write_json_atomic
from aftertune.recipes.callbacks import (
    CheckpointKeeper,
    ComputeMeter,
    MetricsRecorder,
    ProgressBar,
    checkpoint_step,
    complete_checkpoints,
    resumable_checkpoint,
)
from aftertune.recipes.config import TuneConfig
from aftertune.recipes.environment import (
    choose_precision,
    dist_state,
    resolve_device,
    set_threads,
)
from aftertune.recipes.examples import prepare_examples
from aftertune.recipes.loading import apply_peft, load_model, load_tokenizer, resolve_start
from aftertune.recipes.methods import RECIPES, preflight

TUNE_JSON = "tune.json"
STATE_JSON = "tune-state.json"
RESULT_FORMAT = 1


@dataclass
class Checkpoint:
    step: int
    path: str
    label: str


@dataclass
class TuneResult:
    """What a tune produced. `model_ref` is a folder any model reference accepts."""

    name: str
    model_ref: str
    kind: str  # "adapter" or "full"
    start_ref: str  # the model this tune started from
    checkpoints: list[Checkpoint]
    lineage: list[dict[str, Any]]
    metrics: dict[str, Any]
    out_dir: str
    config: dict[str, Any]
    merged_ref: str | None = None
    label: str = "tuned"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["format"] = RESULT_FORMAT
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TuneResult:
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        d["checkpoints"] = [Checkpoint(**c) for c in d.get("checkpoints", [])]
        return cls(**d)


# --------------------------------------------------------------------------- the tune

def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse to start a tune in a folder that holds someone else's files (ours are resumed, not refused).

    Under `--processes N` the launching process checks before the ranks start, and the ranks do not:
    a rank that is quicker than rank 0 may already have created files of this tune."""
    state = out / STATE_JSON
    if state.is_file() or overwrite or not out.is_dir() or os.environ.get("AFTERTUNE_LAUNCHED"):
        return
    held = sorted(p.name for p in out.iterdir())
    if held and not {TUNE_JSON, STATE_JSON, "checkpoints", "model"} & set(held):
        raise UserError(f"{out}: folder exists and holds other files ({', '.join(held[:5])}); pass another "
                        "--out or --overwrite")


def _state_ok(out: Path, cfg: TuneConfig, overwrite: bool) -> dict[str, Any] | None:
    """None to start/resume; the finished result's JSON when the folder already holds this tune."""
    state = out / STATE_JSON
    if not state.is_file():
        check_out_folder(out, overwrite)
        return None
    saved = json.loads(state.read_text(encoding="utf-8"))
    if saved.get("training_hash") != cfg.training_hash():
        if overwrite:
            shutil.rmtree(out)
            return None
        raise UserError(f"{out}: holds a different tune (its config differs); pass another --out, or --overwrite "
                        "to replace it")
    done = out / TUNE_JSON
    if done.is_file() and not overwrite:
        return json.loads(done.read_text(encoding="utf-8"))
    if overwrite:
        shutil.rmtree(out)
    return None


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """TRL's trainers prepare their data with `datasets.map`, one progress bar per pass ("Truncating train
    dataset", "Dropping fully masked examples"): noise beside the tune's own bar, and in a --no-progress log."""
    from datasets.utils import logging as ds_logging

    was_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            ds_logging.enable_progress_bar()


def tune(config: TuneConfig, *, store: Any = None, run_id: str | None = None, progress: bool = True,
         callbacks: Sequence[Any] = (), lineage: Sequence[dict[str, Any]] | None = None, label: str = "tuned",
         exclude_prompts: Sequence[str] = (), overwrite: bool = False) -> TuneResult:
    """Run one fine-tune (see the module docstring); returns where everything is.

    `store`/`run_id`: the run store and run that receive the training metrics (events
    `tune_train`/`tune_eval`) and every checkpoint as a model (`<label>/checkpoint-N`) and the
    result (`<label>`). Without a store nothing is recorded there (metrics.jsonl still is).
    `exclude_prompts`: extra evaluation prompts that mixed-in examples must not contain.
    """
    cfg = config
    if not cfg.model:
        raise UserError("no model to tune: give --model (a packaged name, hub id or local folder)")
    if not cfg.out:
        raise UserError("no output folder: give --out DIR")
    out = Path(cfg.out).expanduser().resolve()
    device = resolve_device(cfg.device)
    preflight(cfg, device)
    recipe = RECIPES.get(cfg.method)

    state = dist_state()
    is_main = state.is_main_process
    barrier = state.wait_for_everyone

    finished = _state_ok(out, cfg, overwrite) if is_main else None
    barrier()
    if not is_main:
        finished = json.loads((out / TUNE_JSON).read_text()) if (out / TUNE_JSON).is_file() else None
    if finished is not None:
        result = TuneResult.from_json(finished)
        if is_main and store is not None and run_id is not None:
            _register_all(store, run_id, result)
            _replay_logs(out / "metrics.jsonl", store, run_id, f"tune:{label}")
        return result
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / STATE_JSON, {"training_hash": cfg.training_hash(), "config": _cfg_json(cfg)})
        if cfg.bea is not None:  # before any checkpoint, so REF#bea finds the trigger from each of them
            from aftertune.recipes.bea import save_bea, trigger_of

            save_bea(out, cfg.bea, trigger_of(cfg.bea))
    barrier()
    set_threads(state.num_processes)

    precision = choose_precision(cfg, device)
    start = resolve_start(cfg, out, is_main, barrier)
    tokenizer = load_tokenizer(start.tokenizer_path, fallback_template=cfg.chat_template)
    pairs_model = str(start.adapter_path or start.load_path)
    data = prepare_examples(cfg, exclude_prompts=exclude_prompts, model_for_pairs=pairs_model, out=out, store=store,
                            is_main=is_main, barrier=barrier, tokenizer=tokenizer)
    from aftertune.recipes.objectives import OBJECTIVES

    objective = OBJECTIVES.get(cfg.objective)
    model = load_model(cfg, start, precision, device, objective.head)
    if start.adapter_path is None and recipe.peft:
        model = apply_peft(model, recipe.peft_config(cfg, model), cfg, objective.head)
    with _quiet_datasets():
        built = objective.build(cfg, model=model, tokenizer=tokenizer, data=data, precision=precision, device=device,
                                out=out)
    trainer = built.trainer
    data.info["tokens"] = built.stats
    data.info["memory_plan"] = built.plan.as_dict()
    data.info["gradient_checkpointing"] = {"on": built.plan.checkpointing, "reason": built.plan.reason}
    data.info["precision"] = dataclasses.asdict(precision)
    if is_main:
        write_json_atomic(out / "data.json", data.info)

    checkpoints: list[Checkpoint] = []

    def on_checkpoint(step: int, path: Path) -> None:
        ck = Checkpoint(step, str(path), f"{label}/checkpoint-{step}")
        checkpoints.append(ck)
        if store is not None and run_id is not None:
            _register(store, run_id, ck.label, path, {"kind": "checkpoint", "step": step, "tune": label,
                                                      "method": cfg.method, "start": start.ref})

    trainer.add_callback(MetricsRecorder(out / "metrics.jsonl", store, run_id, f"tune:{label}"))
    trainer.add_callback(CheckpointKeeper(on_checkpoint))
    meter = ComputeMeter(device)
    trainer.add_callback(meter)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressBar(f"tune {label} ({cfg.method}/{cfg.objective})", enabled=progress))
    for cb in callbacks:
        trainer.add_callback(cb)

    resume = resumable_checkpoint(out / "checkpoints")
    trainer.args.eval_on_start = built.has_eval and resume is None
    if store is not None and run_id is not None and is_main:
        store.add_event(run_id, f"tune:{label}", "tune_start", {"resume_from": str(resume) if resume else None,
                                                                "data": data.info})
    t0 = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    runtime = time.perf_counter() - t0

    final_eval: dict[str, Any] = {}
    if built.has_eval:
        logged = [h for h in trainer.state.log_history if "eval_loss" in h]
        if logged and logged[-1].get("step") == trainer.state.global_step:
            final_eval = {"eval_loss": logged[-1]["eval_loss"]}  # the last step was just evaluated
        else:
            final_eval = trainer.evaluate()
    digests = _rank_digests(trainer, state)

    model_dir = out / "model"
    if is_main:
        tmp = out / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if built.save is not None:
            built.save(trainer, tmp)
        else:
            trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(tmp, model_dir)
    barrier()
    kind = "full" if (model_dir / "config.json").is_file() and not (model_dir / "adapter_config.json").is_file() \
        else "adapter"
    merged_ref = None
    if cfg.merge and is_main and kind == "adapter":
        merged_ref = str(merge_adapter(start.load_path, model_dir, out / "merged"))
    barrier()

    all_ckpts = [Checkpoint(checkpoint_step(p), str(p), f"{label}/checkpoint-{checkpoint_step(p)}")
                 for p in complete_checkpoints(out / "checkpoints")]
    history = trainer.state.log_history
    metrics = {
        "train_loss": train_out.training_loss,
        "global_step": trainer.state.global_step,
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "runtime_s": runtime,
        "tokens_per_s": (trainer.state.num_input_tokens_seen / runtime) if runtime > 0 and resume is None else None,
        "resumed_from": str(resume) if resume else None,
        "eval_loss_start": next((h["eval_loss"] for h in history if "eval_loss" in h and h.get("step") == 0), None),
        "eval_loss": final_eval.get("eval_loss"),
        "loss_curve": [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h],
        "eval_curve": [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in history if "eval_loss" in h],
        **_reward_curve(history),
        **(built.finish(model_dir) if built.finish is not None else {}),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "compute": meter.result(),
        "processes": state.num_processes,
        "rank_param_digests": digests,
        "data": data.info,
    }
    if device == "cuda":
        import torch

        metrics["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    lineage_out = list(lineage or [{"label": "base", "ref": cfg.model}])
    lineage_out.append({"label": label, "ref": str(model_dir), "kind": kind, "method": cfg.method,
                        "objective": cfg.objective, "data": cfg.data, "start": start.ref,
                        "merged": merged_ref})
    result = TuneResult(name=cfg.label(), model_ref=str(model_dir), kind=kind, start_ref=start.ref,
                        checkpoints=all_ckpts, lineage=lineage_out, metrics=metrics, out_dir=str(out),
                        config=_cfg_json(cfg), merged_ref=merged_ref, label=label)
    if is_main:
        write_json_atomic(out / TUNE_JSON, result.to_json())
        if store is not None and run_id is not None:
            _register_all(store, run_id, result)
            store.add_event(run_id, f"tune:{label}", "tune_done", {k: v for k, v in metrics.items()
                                                                   if k not in ("loss_curve", "eval_curve")})
    barrier()
    del trainer, model
    with contextlib.suppress(Exception):
        import gc

        gc.collect()
    return result


def _reward_curve(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Online RL's mean reward (and KL to the start, where a penalty measures it) per logged step; {} otherwise."""
    curve = [{"step": h["step"], "reward": h["reward"], **({"kl": h["kl"]} if "kl" in h else {})}
             for h in history if "reward" in h]
    return {"reward_curve": curve} if curve else {}


def _cfg_json(cfg: TuneConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def _rank_digests(trainer: Any, state: Any) -> list[str]:
    """sha256 of the trainable weights on every process (DDP must leave them identical)."""
    import hashlib

    h = hashlib.sha256()
    model = trainer.model
    for name, p in sorted(model.named_parameters(), key=lambda x: x[0]):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    mine = h.hexdigest()
    if state.num_processes <= 1:
        return [mine]
    from accelerate.utils import gather_object

    digests = list(gather_object([mine]))
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP processes ended with different weights: {digests}")
    return digests


def _register(store: Any, run_id: str, label: str, path: Path, info: dict[str, Any]) -> None:
    from aftertune.sources import fingerprint, resolve_model

    try:
        fp = fingerprint(resolve_model(str(path), progress=False))
    except (UserError, ValueError, OSError):
        fp = ""
    store.add_model(run_id, label, str(path), fp, info)


def _replay_logs(path: Path, store: Any, run_id: str, step_label: str) -> None:
    """A finished tune reused by another run (a new run folder's spec, the same tune folder): its logs
    (`MetricsRecorder`'s metrics.jsonl) become this run's events too, so its report keeps the loss curve; a
    resumed run that has them already gets nothing twice."""
    if not path.is_file() or any(e["step"] == step_label for e in store.events(run_id, "tune_train")):
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        store.add_event(run_id, step_label, f"tune_{row.pop('kind', 'train')}", row)


def _register_all(store: Any, run_id: str, result: TuneResult) -> None:
    for ck in result.checkpoints:
        _register(store, run_id, ck.label, Path(ck.path), {"kind": "checkpoint", "step": ck.step,
                                                           "tune": result.label, "method": result.config["method"]})
    _register(store, run_id, result.label, Path(result.model_ref),
              {"kind": result.kind, "tune": result.label, "method": result.config["method"],
               "lineage": result.lineage, "merged": result.merged_ref})
