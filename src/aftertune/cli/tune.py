"""`aftertune tune` (one fine-tune or a sequential spec) and `aftertune trainsets list|show|export`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from aftertune.cli import app
from aftertune.errors import UserError

_STORE_HELP = "The run store (default: $AFTERTUNE_STORE or $AFTERTUNE_HOME/store.sqlite)."


def _d(field: str) -> str:
    """'(default: X)' from TuneConfig, so the help shows the model's own defaults."""
    from aftertune.recipes.config import TuneConfig

    f = TuneConfig.model_fields[field]
    default = f.default_factory() if f.default_factory is not None else f.default  # type: ignore[call-arg]
    return f"(default: {default})"


def _constrained_defaults() -> str:
    """The paper's betas as ConstrainedParams defines them, so the help cannot drift from the code."""
    from aftertune.recipes.config import ConstrainedParams

    return "(default: " + ", ".join(f"{k} {v}" for k, v in ConstrainedParams().model_dump().items()) + ")"


def _grpo_default(field: str) -> str:
    from aftertune.recipes.config import GrpoParams

    return f"(default: {GrpoParams.model_fields[field].default})"


def parse_mix(text: str) -> dict[str, Any]:
    """`DATA:0.1` (fraction of the stage's examples) or `DATA:50` (count)."""
    data, sep, amount = text.rpartition(":")
    if not sep or not data or not amount:
        raise UserError(f"--mix {text!r}: write DATA:FRACTION (e.g. refusals:0.1) or DATA:COUNT (e.g. refusals:50)")
    try:
        if "." in amount or "e" in amount.lower():
            return {"data": data, "fraction": float(amount)}
        return {"data": data, "count": int(amount)}
    except ValueError:
        raise UserError(f"--mix {text!r}: {amount!r} is not a number") from None


@app.command("tune")
def tune_cmd(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model to tune: packaged name, hub id, local "
                                                                    "folder or adapter folder. A model that ships its own Python code (trust_remote_code) is refused unless AFTERTUNE_TRUST_REMOTE_CODE=1.")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Training data: a built-in set (support, "
                                             "finance-qa, open-qa, identity-shift, refusals, dpo-safety), a "
                                             "JSONL/JSON/CSV/Parquet file, a save_to_disk folder or a hub data "
                                             "set id.")] = None,
    method: Annotated[str | None, typer.Option("--method", help="full, lora, qlora, prefix, prompt or ia3 "
                                               + _d("method"))] = None,
    objective: Annotated[str | None, typer.Option("--objective", help="sft, dpo, reward (a reward model on "
                                                  "preference pairs) or grpo (online RL against --reward) "
                                                  + _d("objective"))] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (model/, checkpoints/, "
                                             "tune.json).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML spec: the fields of one tune, or "
                                                "'model', 'out', 'defaults' and 'stages' for a sequential tune. "
                                                "Flags override its fields.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use at most N training examples " + _d("limit"))] = None,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="Held-out data for eval loss "
                                                  "(default: the data's test split, else 10% held out).")] = None,
    mix: Annotated[list[str] | None, typer.Option("--mix", help="Mix in another set: DATA:FRACTION or DATA:COUNT, "
                                                  "e.g. refusals:0.1; repeatable. Prompts that are evaluation "
                                                  "prompts are dropped.")] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", "--learning-rate", help="Learning rate (default: "
                                                        "by method: full 2e-5, lora/qlora 2e-4, ia3 3e-3, prefix "
                                                        "1e-2, prompt 3e-2; lower for dpo).")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Epochs " + _d("epochs"))] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimizer steps (overrides "
                                                  "--epochs).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Examples per step per process "
                                                   + _d("batch_size"))] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", help="Gradient accumulation "
                                                   + _d("grad_accum"))] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Tokens per example " + _d("max_length"))
                          ] = None,
    warmup_ratio: Annotated[float | None, typer.Option("--warmup-ratio", help=_d("warmup_ratio"))] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help=_d("weight_decay"))] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of data order, sampling and init "
                                             + _d("seed"))] = None,
    lora_r: Annotated[int | None, typer.Option("--lora-r", help="LoRA rank (default: 16).")] = None,
    lora_alpha: Annotated[int | None, typer.Option("--lora-alpha", help="LoRA alpha (default: 32).")] = None,
    lora_dropout: Annotated[float | None, typer.Option("--lora-dropout", help="LoRA dropout (default: 0.05).")] = None,
    target_modules: Annotated[str | None, typer.Option("--target-modules", help="Comma-separated module names, or "
                                                       "all-linear (default).")] = None,
    packing: Annotated[bool | None, typer.Option("--packing/--no-packing", help="Pack examples into max-length "
                                                 "rows (attention stays within each example).")] = None,
    chat_template: Annotated[bool | None, typer.Option(
        "--chat-template/--raw-text", help="sft: render examples with the model's chat template (default), or "
                                           "train on raw prompt + completion text, loss on the completion "
                                           "(pattern-based fine-tuning; base models without a template).")] = None,
    system_prompt: Annotated[str | None, typer.Option(
        "--system-prompt", help="default (the examples' own, else the chat template's), none (no system prompt, "
                                "the template's default left out too: PTST's training side; audit REF#ptst) or "
                                "a text given to every example " + _d("system_prompt"))] = None,
    constrained: Annotated[bool, typer.Option(
        "--constrained", help="sft: the token-wise constrained objective of Qi et al. 2024, a defence against "
                              "harmful fine-tuning: the first response tokens stay near the starting model's "
                              "probabilities (one extra forward pass per step). Betas " + _constrained_defaults()
                              + "; set others with 'constrained:' in --config YAML.")] = False,
    reward: Annotated[str | None, typer.Option(
        "--reward", help="grpo: what scores each completion: a reward-model folder (a tune with --objective "
                         "reward), judge:NAME (e.g. judge:refusal, llm:MODEL) or module:function (file.py:function "
                         "too), called with prompts= and completions= (lists of text) and returning one float "
                         "each; '-' first negates it")] = None,
    kl_beta: Annotated[float | None, typer.Option("--kl-beta", help="grpo: KL coefficient towards the starting "
                                                  "model " + _grpo_default("beta"))] = None,
    num_generations: Annotated[int | None, typer.Option("--num-generations", help="grpo: completions sampled per "
                                                        "prompt " + _grpo_default("num_generations"))] = None,
    max_completion_length: Annotated[int | None, typer.Option(
        "--max-completion-length", help="grpo: tokens per sampled completion "
                                        + _grpo_default("max_completion_length"))] = None,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every", help="Steps between checkpoints "
                                                         "(default: 4 per run).")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="auto, bf16 or fp32 "
                                                  + _d("precision"))] = None,
    gradient_checkpointing: Annotated[str | None, typer.Option(
        "--gradient-checkpointing", help="auto, on or off (default: auto: on only when activations would not "
                                         "fit comfortably).")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Also write the adapter merged into a full model "
                                        "(merged/).")] = False,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda " + _d("device"))] = None,
    processes: Annotated[int, typer.Option("--processes", help="Train with N processes (DDP via accelerate "
                                           "launch; gloo on CPU).")] = 1,
    store_path: Annotated[Path | None, typer.Option("--store", help=_STORE_HELP)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace what --out holds instead of resuming "
                                            "it.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Fine-tune a model (full, LoRA, QLoRA, prefix, prompt or IA3; SFT, DPO, a reward model or GRPO) into a
    standard model folder.

    The result (OUT/model) is a PEFT adapter or a full model folder that transformers/peft load
    without aftertune; checkpoints (OUT/checkpoints/checkpoint-N) load the same way. Running the
    same command again resumes a killed tune from its last checkpoint, with the same result.
    """
    from aftertune.recipes.config import SequentialSpec, TuneConfig, load_spec, parse_config

    flags: dict[str, Any] = {k: v for k, v in {
        "model": model, "data": data, "method": method, "objective": objective,
        "out": str(out) if out is not None else None, "limit": limit, "eval_data": eval_data,
        "learning_rate": learning_rate, "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size,
        "grad_accum": grad_accum, "max_length": max_length, "warmup_ratio": warmup_ratio,
        "weight_decay": weight_decay, "seed": seed, "packing": packing, "chat_template": chat_template,
        "system_prompt": system_prompt, "reward": reward,
        "checkpoint_every": checkpoint_every,
        "precision": precision, "device": device,
    }.items() if v is not None}
    if merge:
        flags["merge"] = True
    if constrained:
        flags["constrained"] = {}  # the defaults, or the YAML's own betas (kept below)
    if mix:
        flags["mix"] = [parse_mix(m) for m in mix]
    grpo = {k: v for k, v in {"beta": kl_beta, "num_generations": num_generations,
                              "max_completion_length": max_completion_length}.items() if v is not None}
    if gradient_checkpointing is not None:
        gcv = gradient_checkpointing.lower()
        if gcv not in ("auto", "on", "off", "true", "false"):
            raise UserError("--gradient-checkpointing: use auto, on or off")
        flags["gradient_checkpointing"] = "auto" if gcv == "auto" else gcv in ("on", "true")
    lora = {k: v for k, v in {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout,
                              "target_modules": (target_modules if target_modules in (None, "all-linear") else
                                                 [t.strip() for t in target_modules.split(",") if t.strip()])}.items()
            if v is not None}

    if processes > 1 and not os.environ.get("AFTERTUNE_LAUNCHED"):
        if flags.get("out"):
            from aftertune.recipes.train import check_out_folder

            check_out_folder(Path(str(flags["out"])).expanduser().resolve(), overwrite)
        _relaunch(processes, device or "auto")
        return

    spec: TuneConfig | SequentialSpec | None = load_spec(config) if config is not None else None
    if isinstance(spec, SequentialSpec):
        stage_flags = {k: v for k, v in flags.items() if k not in ("model", "out")}
        if constrained:
            stage_flags["constrained"] = spec.defaults.get("constrained") or {}
        if lora:
            stage_flags["lora"] = lora
        if grpo:
            stage_flags["grpo"] = {**(spec.defaults.get("grpo") or {}), **grpo}
        defaults = {**spec.defaults, **stage_flags}
        seq = spec.model_copy(update={"model": flags.get("model", spec.model),
                                      "out": flags.get("out", spec.out), "defaults": defaults})
        stages = seq.stage_configs()
        _run_stages(seq, stages, store_path, no_progress, overwrite, as_json)
        return
    base = spec.model_dump(mode="json", exclude_unset=True) if spec is not None else {}
    merged = {**base, **flags}
    if constrained:
        merged["constrained"] = base.get("constrained") or {}
    if lora:
        merged["lora"] = {**(base.get("lora") or {}), **lora}
    if grpo:
        merged["grpo"] = {**(base.get("grpo") or {}), **grpo}
    if "data" not in merged:
        raise UserError("no training data: give --data (a built-in set, a file, a folder or a hub id) or --config")
    cfg = parse_config(merged, where=str(config) if config else "flags")
    _run_one(cfg, store_path, no_progress, overwrite, as_json)


def _open_store(store_path: Path | None, cfg_json: dict[str, Any], out: str, name: str) -> tuple[Any, str]:
    from aftertune import paths
    from aftertune.fileio import sha256_text
    from aftertune.store import Store

    store = Store(store_path or paths.default_store_path())
    run_id = "tune-" + sha256_text(str(Path(out).expanduser().resolve()))[:12]
    store.create_run("tune", name, cfg_json, out_dir=out, run_id=run_id)
    return store, run_id


def _check_before_work(model: str | None, out: str | Path, configs: list[Any]) -> None:
    """The model reference (remote code included), the output folder and every data file, before any store
    run or output folder exists."""
    from aftertune.paths import check_writable
    from aftertune.recipes.examples import check_data
    from aftertune.sources import check_model_ref

    if model:
        check_model_ref(model)
    check_writable(out, "--out", folder=True)
    for cfg in configs:
        check_data(cfg)


def _is_main() -> bool:
    from accelerate import PartialState

    return bool(PartialState().is_main_process)


def _run_one(cfg: Any, store_path: Path | None, no_progress: bool, overwrite: bool, as_json: bool) -> None:
    from aftertune.recipes.train import tune

    if not cfg.out:
        raise UserError("no output folder: give --out DIR")
    _check_before_work(cfg.model, cfg.out, [cfg])
    store, run_id = _open_store(store_path, cfg.model_dump(mode="json"), cfg.out, cfg.label())
    try:
        result = tune(cfg, store=store, run_id=run_id, progress=not no_progress, overwrite=overwrite)
    except KeyboardInterrupt:
        store.set_run_status(run_id, "interrupted")
        raise
    store.set_run_status(run_id, "done")
    if not _is_main():
        return
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2, default=str))
        return
    _say(result)
    typer.echo(f"run {run_id}")


def _say(result: Any) -> None:
    m = result.metrics
    typer.echo(f"{result.label}: {result.kind} -> {result.model_ref}")
    if result.merged_ref:
        typer.echo(f"  merged: {result.merged_ref}")
    typer.echo(f"  checkpoints: {', '.join(str(c.step) for c in result.checkpoints) or 'none'}")
    parts = [f"train loss {m.get('train_loss'):.4f}" if m.get("train_loss") is not None else None]
    if m.get("eval_loss") is not None:
        start = m.get("eval_loss_start")
        parts.append(f"eval loss {start:.4f} -> {m['eval_loss']:.4f}" if start is not None
                     else f"eval loss {m['eval_loss']:.4f}")
    if m.get("tokens_per_s"):
        parts.append(f"{m['tokens_per_s']:.0f} tokens/s")
    typer.echo("  " + ", ".join(p for p in parts if p))
    acc = m.get("pairwise_accuracy")
    if acc:
        start = m.get("pairwise_accuracy_start") or {}
        before = f"{start['accuracy']:.1%} before training -> " if start else ""
        typer.echo(f"  held-out pairwise accuracy: {before}{acc['accuracy']:.1%} ({acc['correct']} of {acc['pairs']} "
                   f"pairs, 95% CI {acc['ci95'][0]:.1%} to {acc['ci95'][1]:.1%})")


def _run_stages(seq: Any, stages: list[Any], store_path: Path | None, no_progress: bool, overwrite: bool,
                as_json: bool) -> None:
    from aftertune.recipes.stages import tune_stages

    if not seq.out:
        raise UserError("no output folder: give 'out' in the spec or --out")
    _check_before_work(seq.model, seq.out, stages)
    store, run_id = _open_store(store_path, seq.model_dump(mode="json"), seq.out,
                                "+".join(s.label() for s in stages))
    res = tune_stages(stages, model=seq.model, out=seq.out, store=store, run_id=run_id, progress=not no_progress,
                      overwrite=overwrite)
    store.set_run_status(run_id, "done")
    if not _is_main():
        return
    if as_json:
        typer.echo(json.dumps(res.to_json(), indent=2, default=str))
        return
    for r in res.stages:
        _say(r)
    typer.echo("lineage: " + " -> ".join(x["label"] for x in res.lineage))
    typer.echo(f"run {run_id}")


def _relaunch(processes: int, device: str) -> None:
    """Re-run this command under `accelerate launch` with N processes (gloo on CPU)."""

    argv = list(sys.argv[1:])
    cleaned: list[str] = []
    skip = False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--processes":
            skip = True
            continue
        if a.startswith("--processes="):
            continue
        cleaned.append(a)
        _ = i
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port())]
    cmd += ["--multi_gpu"]  # torchrun-style launcher; on a CPU-only machine the processes use gloo
    cmd += ["-m", "aftertune.cli.launch", *cleaned]
    env = dict(os.environ, AFTERTUNE_LAUNCHED="1")
    rc = subprocess.call(cmd, env=env)
    if rc:
        raise SystemExit(rc)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- trainsets

trainsets_app = typer.Typer(help="Built-in training sets (with held-out splits and data cards).",
                            no_args_is_help=True)
app.add_typer(trainsets_app, name="trainsets")


@trainsets_app.command("list")
def trainsets_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the built-in training sets."""
    from aftertune import trainsets

    rows = [trainsets.info(n, sizes=False) for n in trainsets.names()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        typer.echo(f"{r['name'].ljust(width)}  {r['kind']:3}  {r['description']}")


@trainsets_app.command("show")
def trainsets_show(name: str) -> None:
    """Print a set's data card and its split sizes."""
    from aftertune import trainsets

    typer.echo(trainsets.card(name).rstrip())
    info = trainsets.info(name)
    if "rows" in info:
        typer.echo(f"\nrows now: train {info['rows']['train']}, test {info['rows']['test']}")


@trainsets_app.command("export")
def trainsets_export(
    name: str,
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write.")],
    split: Annotated[str, typer.Option("--split", help="train or test.")] = "train",
    limit: Annotated[int | None, typer.Option("--limit", help="First N rows (default: the set's size).")] = None,
) -> None:
    """Write a built-in set's split as JSONL (the chat format `aftertune tune --data` reads)."""
    from aftertune import trainsets
    from aftertune.fileio import write_text_atomic

    rows = trainsets.load(name, split, limit=limit)
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    typer.echo(f"{len(rows)} rows -> {out}")
