"""`aftertune generate`: answer a JSONL file of prompts with one model, through the store.

Each row has `prompt` (a string, sent as the user's chat message) or `messages`
(a list of {role, content}); any other fields are carried through to the
output, which adds `response` and `finish_reason`. Every request goes through
the store's cache, so running the same command again answers from the store
(and an interrupted run keeps what it finished), and each invocation is
recorded as a run of kind "generate" with one record per row.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from aftertune.cli import app
from aftertune.cli.audit import UNALIGNED_HELP
from aftertune.engines.base import Decoding, GenerateRequest, Message
from aftertune.errors import UserError

_STORE_HELP = "The run store (default: $AFTERTUNE_STORE or $AFTERTUNE_HOME/store.sqlite)."
_ROW_HELP = ('write one JSON object per line with "prompt": "text" or "messages": '
             '[{"role": "user", "content": "text"}]')


def _line_numbers(path: Path) -> list[int]:
    """The line number of every non-blank line (the rows read_jsonl returns, in order)."""
    from aftertune.fileio import read_text

    return [i for i, line in enumerate(read_text(path, ".jsonl file").splitlines(), 1) if line.strip()]


def build_requests(path: Path, rows: list[dict[str, Any]], *, decoding: Decoding, system: str | None,
                   raw: bool) -> list[GenerateRequest]:
    """One request per row; a bad row is a UserError naming the file and line."""
    lines = _line_numbers(path)
    requests = []
    for row, line in zip(rows, lines, strict=True):
        where = f"{path}:{line}"
        prompt, messages = row.get("prompt"), row.get("messages")
        if (prompt is None) == (messages is None):
            raise UserError(f"{where}: needs exactly one of \"prompt\" or \"messages\"; {_ROW_HELP}")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise UserError(f"{where}: \"prompt\" must be a string, got {type(prompt).__name__}")
            if raw:
                requests.append(GenerateRequest(prompt=prompt, decoding=decoding))
            else:
                requests.append(GenerateRequest.chat(prompt, system=system, decoding=decoding))
            continue
        if raw:
            raise UserError(f"{where}: --raw sends plain prompts, but this row has \"messages\"; "
                            "give it a \"prompt\" or drop --raw")
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects")
        msgs = []
        for i, m in enumerate(messages):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise UserError(f"{where}: messages[{i}] must be an object with string \"role\" and \"content\"")
            msgs.append(Message(m["role"], m["content"]))
        if system and msgs[0].role != "system":
            msgs.insert(0, Message("system", system))
        requests.append(GenerateRequest(messages=tuple(msgs), decoding=decoding))
    return requests


@app.command("generate")
def generate_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Packaged name, hub id, local or adapter dir, or "
                                                             "openai:MODEL@URL. A model that ships its own Python code (trust_remote_code) is refused unless AFTERTUNE_TRUST_REMOTE_CODE=1.")],
    prompts: Annotated[Path, typer.Option("--prompts", "-p", help="JSONL file: rows with \"prompt\" or "
                                                                  "\"messages\".")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate at most.")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (with --temperature > 0).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed; the same seed gives the same text.")] = 0,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop string (cut from the text); "
                                                                  "repeatable.")] = None,
    system: Annotated[str | None, typer.Option("--system", help="System message for rows that have none.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send \"prompt\" as plain text, without the chat "
                                                    "template.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Sequences decoded together "
                                                                       "(local models).")] = 16,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output JSONL (default: stdout).")] = None,
    store_path: Annotated[Path | None, typer.Option("--store", help=_STORE_HELP)] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="Force a backend: hf, openai or vllm.")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="Local models: auto (bf16 where the hardware has "
                                                              "it), bfloat16 or float32.")] = None,
    unaligned: Annotated[str | None, typer.Option("--unaligned", metavar="REF", help=UNALIGNED_HELP)] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Generate a response for every row of a JSONL file (one model, greedy unless --temperature)."""
    from aftertune.fileio import atomic_path, read_jsonl
    from aftertune.variants import with_unaligned

    model = with_unaligned(model, unaligned)

    if max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if temperature < 0:
        raise UserError("--temperature must be 0 (greedy) or more")
    if not 0 < top_p <= 1:
        raise UserError("--top-p must be in (0, 1]")
    rows = read_jsonl(prompts)
    if out is not None:
        from aftertune.paths import check_writable

        check_writable(out, "--out")  # before generating everything
    if not rows:
        raise UserError(f"{prompts}: no prompts in the file; {_ROW_HELP}")
    decoding = Decoding(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                        stop=tuple(stop or ()))
    requests = build_requests(prompts, rows, decoding=decoding, system=system, raw=raw)
    results = run_generate(model, requests, prompts_file=prompts, batch_size=batch_size, store_path=store_path,
                           engine=engine, dtype=dtype, progress=not no_progress)
    lines = [json.dumps({**row, "response": r.text, "finish_reason": r.finish_reason}, ensure_ascii=False)
             for row, r in zip(rows, results, strict=True)]
    text = "".join(line + "\n" for line in lines)
    if out is None:
        sys.stdout.write(text)
        return
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {len(lines)} rows to {out}", err=True)


def run_generate(model: str, requests: list[GenerateRequest], *, prompts_file: Path, batch_size: int,
                 store_path: Path | None, engine: str | None, dtype: str | None, progress: bool) -> list[Any]:
    """Load the model, answer through the store's cache, and record the run (kind "generate")."""
    from aftertune.paths import default_store_path
    from aftertune.sources import check_model_ref
    from aftertune.store import Store
    from aftertune.variants import check_variants

    check_model_ref(model)  # before the store run exists
    check_variants(model)
    local = not (engine == "openai" or model.startswith("openai:"))
    options: dict[str, Any] = {}
    if local:
        options["batch_size"] = batch_size
        if dtype:
            options["dtype"] = dtype
    elif dtype:
        raise UserError("--dtype applies to local models only")
    store = Store(store_path or default_store_path())
    try:
        return _run(store, model, requests, prompts_file=prompts_file, batch_size=batch_size, engine=engine,
                    options=options, local=local, progress=progress)
    finally:
        store.close()


def _run(store: Any, model: str, requests: list[GenerateRequest], *, prompts_file: Path,
         batch_size: int, engine: str | None, options: dict[str, Any], local: bool, progress: bool) -> list[Any]:
    from aftertune.audit import label_for
    from aftertune.fileio import sha256_file
    from aftertune.record import Record
    from aftertune.store import CachedEngine
    from aftertune.variants import load_engine

    spec = {"model": model, "prompts": str(prompts_file.resolve()), "prompts_sha256": sha256_file(prompts_file),
            "n": len(requests), "decoding": requests[0].to_json()["decoding"], "engine": engine, **options}
    run_id = store.create_run("generate", f"generate {label_for(model)} on {prompts_file.name}", spec)
    bar = None
    with store.run_status(run_id):
        try:
            t0 = time.time()
            eng = load_engine(model, engine=engine, **options)  # a string: prompting variants (REF#icl:...) work
            store.add_model(run_id, "model", model, eng.fingerprint, {**eng.describe(), "label": "model"})
            store.add_event(run_id, "load:model", "timing", {"seconds": round(time.time() - t0, 3)})
            # several engine batches per store transaction: room for continuous batching to refill slots
            cached = CachedEngine(eng, store, batch_size=batch_size * 8 if local else 64)
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(requests), desc="generate", unit="prompt", file=sys.stderr,
                           dynamic_ncols=True)
            t1 = time.time()
            results = cached.generate(requests, bar.update if bar is not None else None)
            store.add_event(run_id, "generate", "timing", {"seconds": round(time.time() - t1, 3), **cached.stats,
                                                           "n_new_tokens": sum(r.n_new_tokens for r in results)})
            store.put_records(run_id, [
                Record(model="model", suite="generate", item_id=str(i), category="", request=req.to_json(),
                       response=res.text, scores={},
                       details={"finish_reason": res.finish_reason, "prompt_text": res.prompt_text,
                                "n_prompt_tokens": res.n_prompt_tokens, "n_new_tokens": res.n_new_tokens})
                for i, (req, res) in enumerate(zip(requests, results, strict=True))
            ])
            eng.close()
        finally:
            if bar is not None:
                bar.close()
    return results
