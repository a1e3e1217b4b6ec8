"""The audit runner: every suite on every model, one per-item record each, resumable.

What it runs (labels, sampled suites, judges) is settled first by `aftertune.audit.plan`.

`audit(models, suites, out_dir=...)` creates (or resumes) a run of kind
"audit" in the store. It loads and samples each suite's items once, so every
model sees the same items and byte-identical requests; then loads each model
once, runs every suite on it through the store's `CachedEngine`, writes the
records of each chunk of items in one transaction, and frees the model before
loading the next. Items already recorded are skipped, so running the same
command again after an interruption finishes the job instead of starting
over: the run id is kept in `out_dir/run.json` and reused when the spec is the
same.

Besides the records it writes events: `sample` (what was sampled per suite),
`protocol` (each suite's prompt/decoding/source description), `timing`
(seconds per model × suite, cache hits and misses) and `judge_validity`.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aftertune.audit.plan import (
    PreparedSuite,
    build_judges,
    check_judges,
    check_labels,
    prepare_suites,
    with_default_judges,
)
from aftertune.errors import UserError
from aftertune.fileio import canonical_json, write_json_atomic
from aftertune.judges.base import NO_JUDGE
from aftertune.record import Record
from aftertune.sources.base import ModelRef
from aftertune.store import CachedEngine, Store, new_run_id
from aftertune.suites.base import Item, SuiteContext
from aftertune.suites.spec import SuiteArg, SuiteSpec, parse_suites

RUN_FILE = "run.json"
CHUNK_ITEMS = 64  # items per suite.run call: the records of one chunk are committed together
CACHE_BATCHES = 8  # engine batches per cache commit (the engine sorts and shares contexts within one call)


def _spec(models: Mapping[str, str], suites: Sequence[tuple[str, dict[str, Any]]], limit: Any, seed: int,
          judges: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"kind": "audit", "models": dict(models), "suites": [[n, o] for n, o in suites],
            "limit": limit, "seed": seed, "judges": dict(judges or {})}


def _resume_id(out_dir: Path, spec_hash: str, store: Store) -> str | None:
    """The run id recorded in out_dir/run.json when it is for the same spec and still in the store."""
    import json

    path = out_dir / RUN_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("spec_sha256") != spec_hash or not info.get("run_id"):
        return None
    try:
        store.get_run(info["run_id"])
    except UserError:
        return None
    return str(info["run_id"])


def _judge_validity(judge: Any, store: Store) -> dict[str, Any] | None:
    try:
        from aftertune.judges import validity
    except ImportError:
        return None
    return validity(judge, store)


def _record_guard_validity(store: Store, run_id: str, label: str, engine: Any) -> None:
    """A guardrail variant is a judge in front of the model: its own accuracy goes beside the judges'."""
    from aftertune.variants.guardrail import GuardEngine, guard_validity

    while engine is not None and not isinstance(engine, GuardEngine):
        engine = getattr(engine, "inner", None)
    if engine is None or any(e["step"] == f"guard:{label}" for e in store.events(run_id, kind="judge_validity")):
        return
    store.add_event(run_id, f"guard:{label}", "judge_validity", {"role": f"guard:{label}", **guard_validity(engine)})


def _engine_options(ref: str, engine: str | None, options: Mapping[str, Any], batch_size: int) -> dict[str, Any]:
    """The backend's options: hf also gets the batch size and merges adapters; a server picks its own dtype."""
    out = dict(options)
    if engine in ("openai", "server") or ref.startswith("openai:"):
        out.pop("dtype", None)  # the server's choice
    elif engine in (None, "hf"):  # vllm schedules its own batches
        out.setdefault("batch_size", batch_size)
        out.setdefault("merge_adapter", True)  # an audit never switches the adapter off: run it at base speed
    return out


def _free(engine: Any) -> None:
    engine.close()
    del engine
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


class _Bar:
    """A tqdm bar over items with the request count as postfix (or nothing when progress is off)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.requests = 0
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="item", file=sys.stderr, dynamic_ncols=True, leave=True)

    def on_requests(self, n: int) -> None:
        self.requests += n
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.requests} requests", refresh=False)

    def items_done(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def audit(
    models: Mapping[str, str | ModelRef],
    suites: Sequence[SuiteArg],
    *,
    store: Store | str | Path | None = None,
    out_dir: str | Path,
    limit: int | str | None = None,
    seed: int = 0,
    judges: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    run_id: str | None = None,
    progress: bool = True,
    engine: str | None = None,
    engine_options: Mapping[str, Any] | None = None,
    judge_engine: Mapping[str, Any] | None = None,
    name: str | None = None,
    reports: bool = True,
    reference: str | None = None,
) -> str:
    """Run `suites` on every model in `models` (label → reference); return the run id.

    `limit` is items per suite (None: each suite's default; 0 or "all": every
    item); `seed` fixes which items are sampled. `judges` maps a role
    ("refusal", "toxicity", ...) to a judge spec for `aftertune.judges.build_judge`.
    `judge_engine` ({engine, options, endpoint}) runs the LLM judges' models (the spec's `engines.judges`).
    `batch_size` is the model batch of local engines; results are committed to
    the store's cache every `CACHE_BATCHES` batches. `reference` is the model KL
    is measured from (a reference like those in `models`; the pipeline passes the
    base): suites that read it (`Suite.uses_reference`) get it as
    `SuiteContext.reference`, loaded once beside each other model, on the same
    engine settings and through the same cache. Re-running with the same
    `out_dir` and arguments resumes.
    """
    if not models:
        raise UserError("no models to audit; pass at least one --model")
    check_labels(models)
    refs = {label: (r.ref if isinstance(r, ModelRef) else str(r)) for label, r in models.items()}
    suite_specs = parse_suites(suites)
    prepared = prepare_suites(suite_specs, limit, seed)
    check_judges(prepared, judges)

    with contextlib.ExitStack() as stack:
        if not isinstance(store, Store):
            from aftertune.paths import default_store_path

            store = Store(store or default_store_path())
            stack.callback(store.close)  # a store this call opened is closed by it, whatever happens
        return _audit_in(store, refs, models, suite_specs, prepared, out=Path(out_dir), limit=limit, seed=seed,
                         judges=judges, batch_size=batch_size, run_id=run_id, progress=progress, engine=engine,
                         engine_options=engine_options or {}, judge_engine=judge_engine, name=name,
                         reports=reports, reference=reference)


def _audit_in(store: Store, refs: Mapping[str, str], models: Mapping[str, str | ModelRef],
              suite_specs: Sequence[SuiteSpec], prepared: Sequence[PreparedSuite], *, out: Path,
              limit: int | str | None, seed: int, judges: Mapping[str, Any] | None, batch_size: int,
              run_id: str | None, progress: bool, engine: str | None, engine_options: Mapping[str, Any],
              judge_engine: Mapping[str, Any] | None, name: str | None, reports: bool,
              reference: str | None = None) -> str:
    out.mkdir(parents=True, exist_ok=True)
    spec = _spec(refs, suite_specs, limit, seed, {k: (v if isinstance(v, (str, dict)) else str(v))
                                                   for k, v in (judges or {}).items()})
    if reference is not None and any(p.suite.uses_reference for p in prepared):
        spec["reference"] = reference  # only then: the spec hash of every other audit stays as it was
    spec["sampling"] = {p.suite.name: {"limit": p.limit, "sampled": len(p.items), "of": p.n_total,
                                       "protocol_sha256": hashlib.sha256(canonical_json(p.suite.protocol()).encode())
                                       .hexdigest()} for p in prepared}
    spec_hash = hashlib.sha256(canonical_json(spec).encode()).hexdigest()
    owner = run_id is None  # inside a caller's run (the pipeline), the caller owns its status
    run_id = run_id or _resume_id(out, spec_hash, store) or new_run_id(f"audit-{spec_hash[:6]}")
    store.create_run("audit", name or f"audit of {', '.join(refs)}", spec, out_dir=str(out.resolve()), run_id=run_id)
    write_json_atomic(out / RUN_FILE, {"run_id": run_id, "kind": "audit", "store": str(store.path.resolve()),
                                       "spec_sha256": spec_hash, "spec": spec})
    with store.run_status(run_id) if owner else contextlib.nullcontext():
        _run(store, run_id, refs, models, prepared, seed=seed, judges=judges,
             batch_size=batch_size, progress=progress, engine=engine, engine_options=engine_options,
             judge_engine=judge_engine, reference=spec.get("reference"))
    if reports:
        write_outputs(store, run_id, out)
    return run_id


def write_outputs(store: Store, run_id: str, out_dir: Path) -> None:
    """records.jsonl and the reports; the records are kept even when the report fails."""
    from aftertune.report import write_records

    try:
        from aftertune.report import write_reports
    except ImportError:
        write_records(store, run_id, out_dir)
        return
    try:
        write_reports(store, run_id, out_dir)
    except Exception:
        write_records(store, run_id, out_dir)
        raise


def _run(store: Store, run_id: str, refs: Mapping[str, str], models: Mapping[str, str | ModelRef],
         prepared: Sequence[PreparedSuite], *, seed: int, judges: Mapping[str, Any] | None,
         batch_size: int, progress: bool, engine: str | None, engine_options: Mapping[str, Any],
         judge_engine: Mapping[str, Any] | None = None, reference: str | None = None) -> None:
    recorded = {e["step"] for e in store.events(run_id, kind="sample")}
    for p in prepared:
        # once per suite and run: a pipeline audits several times into one run (base, tuned, checkpoints)
        if f"sample:{p.suite.name}" not in recorded:
            ids = [it.id for it in p.items]
            store.add_event(run_id, f"sample:{p.suite.name}", "sample", {
                "suite": p.suite.name, "seed": seed, "limit": p.limit, "n_items": p.n_total, "n_sampled": len(ids),
                "item_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
                "sampler": "suite" if getattr(p.suite, "sample", None) else "stratified"})
            store.add_event(run_id, f"protocol:{p.suite.name}", "protocol",
                            {"suite": p.suite.name, "protocol": p.suite.protocol()})

    judge_objs = build_judges(with_default_judges(judges, prepared), judge_engine)
    try:
        _judge_and_run(store, run_id, refs, models, prepared, judge_objs, batch_size=batch_size, progress=progress,
                       engine=engine, engine_options=engine_options, reference=reference)
    finally:
        for judge in judge_objs.values():
            if judge != NO_JUDGE:
                judge.close()  # a judge's model server stops with the audit


def _judge_and_run(store: Store, run_id: str, refs: Mapping[str, str], models: Mapping[str, str | ModelRef],
                   prepared: Sequence[PreparedSuite], judge_objs: Mapping[str, Any], *, batch_size: int,
                   progress: bool, engine: str | None, engine_options: Mapping[str, Any],
                   reference: str | None = None) -> None:
    from aftertune.variants import load_engine

    if judge_objs:  # each role's once per run (a guard's or a reward model's entry is not a judge role's)
        measured = {e["step"] for e in store.events(run_id, kind="judge_validity")}
        for role, judge in judge_objs.items():
            if judge == NO_JUDGE or f"judge:{role}" in measured:
                continue
            v = _judge_validity(judge, store)
            if v is not None:
                store.add_event(run_id, f"judge:{role}", "judge_validity", {"role": role, **v})

    ref_engine: list[CachedEngine] = []  # the reference model, loaded at its first use and kept for the others

    def reference_for(label: str, ref: str, own: CachedEngine) -> CachedEngine:
        assert reference is not None
        if ref == reference:
            return own  # the reference itself: its log-ratios are 0, answered from the cache
        if not ref_engine:
            t0 = time.monotonic()
            ref_engine.append(CachedEngine(load_engine(reference, engine=engine, **_engine_options(
                reference, engine, engine_options, batch_size)), store, batch_size=batch_size * CACHE_BATCHES))
            store.add_event(run_id, f"load:reference:{label}", "timing",
                            {"step": "load the reference model", "seconds": round(time.monotonic() - t0, 3)})
        return ref_engine[0]

    try:
        for label, ref in refs.items():
            todo = {p.suite.name: [it for it in p.items if it.id not in store.done_items(run_id, label, p.suite.name)]
                    for p in prepared}
            if not any(todo.values()):
                continue
            t0 = time.monotonic()
            model = models[label]
            eng = load_engine(model if isinstance(model, ModelRef) else ref, engine=engine,
                              **_engine_options(ref, engine, engine_options, batch_size))
            store.add_event(run_id, f"load:{label}", "timing",
                            {"step": f"load {label}", "seconds": round(time.monotonic() - t0, 3), "model": label})
            cached = CachedEngine(eng, store, batch_size=batch_size * CACHE_BATCHES)
            try:
                store.add_model(run_id, label, ref, eng.fingerprint, {**eng.describe(), "label": label})
                _record_guard_validity(store, run_id, label, eng)
                for p in prepared:
                    items = todo[p.suite.name]
                    if items:
                        ref_eng = reference_for(label, ref, cached) if reference and p.suite.uses_reference else None
                        try:
                            _run_suite(store, run_id, label, cached, p, items, judge_objs, progress, ref_eng)
                        except NotImplementedError as exc:  # e.g. a server that cannot score log-likelihoods
                            _record_skip(store, run_id, label, p.suite.name, str(exc))
            finally:
                _free(cached)
    finally:
        for e in ref_engine:
            _free(e)


def _record_skip(store: Store, run_id: str, label: str, suite: str, reason: str) -> None:
    """A suite this model's engine cannot run: said now, and kept for the report's warnings, instead of ending
    the audit of every other suite and model."""
    print(f"warning: {label} · {suite}: not measured: {reason}", file=sys.stderr, flush=True)
    payload = {"model": label, "suite": suite, "reason": reason}
    if payload not in [e["payload"] for e in store.events(run_id, kind="suite_skipped")]:
        store.add_event(run_id, f"skip:{label}:{suite}", "suite_skipped", payload)


def _run_suite(store: Store, run_id: str, label: str, engine: CachedEngine, p: PreparedSuite,
               items: Sequence[Item], judges: Mapping[str, Any], progress: bool,
               reference: CachedEngine | None = None) -> None:
    key = p.suite.name
    bar = _Bar(len(items), f"{label} · {key}", progress)
    ctx = SuiteContext(model_label=label, judges=dict(judges), progress=bar.on_requests, reference=reference)
    hits0, misses0 = engine.stats["hits"], engine.stats["misses"]
    t0 = time.monotonic()
    try:
        for start in range(0, len(items), CHUNK_ITEMS):
            chunk = items[start:start + CHUNK_ITEMS]
            records = p.suite.run(engine, chunk, ctx)
            _check_records(key, label, chunk, records)
            store.put_records(run_id, records)
            bar.items_done(len(chunk))
    finally:
        bar.close()
        store.add_event(run_id, f"{label}:{key}", "timing", {
            "step": f"{key} on {label}", "seconds": round(time.monotonic() - t0, 3), "model": label, "suite": key,
            "items": len(items), "cache_hits": engine.stats["hits"] - hits0,
            "cache_misses": engine.stats["misses"] - misses0})


def _check_records(suite: str, label: str, items: Sequence[Item], records: Sequence[Record]) -> None:
    """A suite must answer every item it was given, once, for this model (a bug otherwise)."""
    want = {it.id for it in items}
    got = [r.item_id for r in records]
    if set(got) != want or len(got) != len(want):
        raise RuntimeError(f"suite {suite} returned records for {len(set(got) & want)} of {len(want)} items")
    bad = [(r.model, r.suite) for r in records if r.model != label or r.suite != suite]
    if bad:
        raise RuntimeError(f"suite {suite} labelled records {bad[0]} instead of {(label, suite)}")
