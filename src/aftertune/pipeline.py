"""`aftertune run`: scan → audit base (+ ICL) → fine-tune → audit tuned and checkpoints → compare → report → gate.

Every step is resumable because every step's work is kept: the audits skip
items already recorded and answer repeated requests from the store's cache,
the fine-tune resumes from its last checkpoint, and the scan and reports are
cheap to redo. So the same command, after Ctrl-C or kill -9, continues and ends
with the results an uninterrupted run would have given. One run in the store
holds every model's records, so the report compares them all on shared items.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.fileio import canonical_json, write_json_atomic
from aftertune.spec import PipelineSpec, variant_label
from aftertune.store import Store, new_run_id

RUN_FILE = "run.json"
QUANTIZED_DIR = "quantized"  # the run folder's copy of every audited deployment variant (quant, gguf)


@dataclass
class PipelineResult:
    run_id: str
    out_dir: Path
    results: dict[str, Any]
    violations: list[Any] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)  # label → reference


def _run_id(out: Path, spec_hash: str, store: Store) -> str:
    """Reuse the run recorded in out/run.json when the spec is unchanged (resume), else a new id."""
    try:
        info = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
        if info.get("spec_sha256") == spec_hash:
            store.get_run(info["run_id"])
            return str(info["run_id"])
    except (OSError, ValueError, KeyError, UserError):
        pass
    return new_run_id(f"run-{spec_hash[:6]}")


class _Steps:
    """Prints a header per step and records its wall time as a `timing` event."""

    def __init__(self, store: Store, run_id: str, say: Callable[[str], None]) -> None:
        self.store, self.run_id, self.say, self.n = store, run_id, say, 0

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.n += 1
        self.say(f"[{self.n}] {name}")
        t0 = time.monotonic()
        yield
        secs = round(time.monotonic() - t0, 2)
        self.store.add_event(self.run_id, f"pipeline:{name}", "timing", {"step": name, "seconds": secs})
        self.say(f"    done in {secs:.1f}s")


def _suites(names: list[str], limits: dict[str, int]) -> list[tuple[str, dict[str, Any]]]:
    from aftertune.suites.spec import parse_suite_arg

    out = []
    for text in names:
        for name, options in parse_suite_arg(text):
            if name in limits:
                options = {**options, "limit": limits[name]}
            out.append((name, options))
    return out


def _task_options(suites: list[tuple[str, dict[str, Any]]], train: dict[str, Any],
                  say: Callable[[str], None] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The `task` suite scores the fine-tuning task's held-out data unless the spec names other data.

    A built-in set has its own held-out split; a user file needs `eval_data` in the training
    config (scoring the training rows themselves would measure memorisation), else the task
    suite is left out and the run says so. A built-in set drawn from another suite's items
    (`nli-fewshot` from `ood`) makes that suite leave them out (`exclude=SET`).
    """
    from aftertune import trainsets

    out = []
    for name, options in suites:
        if name == "task" and "task" not in options and "data" not in options:
            if trainsets.is_builtin(train["data"]):
                options = {"task": train["data"], **options}
            elif train.get("eval_data"):
                options = {"data": train["eval_data"], **options}
            else:
                if say:
                    say("    task suite skipped: the training data is a file without train.eval_data (held-out rows)")
                continue
        elif (trainsets.is_builtin(train["data"]) and "exclude" not in options
              and name in trainsets.TRAINSETS.get(train["data"]).drawn_from_suites):
            options = {**options, "exclude": train["data"]}
        out.append((name, options))
    return out


def run_pipeline(spec: PipelineSpec, out_dir: str | Path, *, store: Store | None = None, progress: bool = True,
                 say: Callable[[str], None] | None = None) -> PipelineResult:
    from aftertune.audit import audit
    from aftertune.checkpoint_choice import choose_checkpoint
    from aftertune.compare.gate import check
    from aftertune.early_stop import SafetyStop, record_early_stop
    from aftertune.recipes.stages import Stage, tune_stages
    from aftertune.report import write_reports
    from aftertune.suites.spec import suite_names

    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    own_store = store is None
    if store is None:
        from aftertune.paths import default_store_path

        store = Store(default_store_path())
    spec_json = spec.model_dump(mode="json")
    spec_hash = hashlib.sha256(canonical_json(spec_json).encode()).hexdigest()
    run_id = _run_id(out, spec_hash, store)
    store.create_run("pipeline", spec.name, spec_json, out_dir=str(out), run_id=run_id)
    write_json_atomic(out / RUN_FILE, {"run_id": run_id, "kind": "pipeline", "store": str(store.path.resolve()),
                                       "spec_sha256": spec_hash, "spec": spec_json})
    say(f"aftertune run {spec.name!r}: run {run_id}, store {store.path}, output {out}")
    with store.run_status(run_id):  # failed/interrupted when any step raises; nested audits leave it alone
        steps = _Steps(store, run_id, say)
        if spec.reward_models:
            with steps.step(f"train {len(spec.reward_models)} reward model(s) ({', '.join(spec.reward_models)})"):
                spec = _reward_models(spec, store, run_id, out, progress, say)
        train = spec.stages[-1] if spec.stages else spec.train
        data = train["data"]
        main_suites = _task_options(_suites(spec.audit.suites, _planned_limits(spec, say)), train, say)
        audit_kw = dict(store=store, run_id=run_id, seed=spec.audit.seed, judges=spec.audit.judges or None,
                        batch_size=spec.audit.batch_size, progress=progress, reports=False,
                        judge_engine=spec.engines.judges.judge_kwargs())
        base_ref = spec.engines.base.endpoint or spec.base  # an endpoint serving the base, else its weights
        audit_kw["reference"] = base_ref  # KL from the start (overoptimization), for every model audited
        models: dict[str, str] = {"base": base_ref}

        if spec.scan:
            with steps.step(f"scan the training data ({data})"):
                _scan(store, run_id, data, out, say, main_suites)

        base_models = dict(models)
        if spec.icl is not None:
            icl = spec.icl
            label = f"icl-{icl.k}"
            base_models[label] = f"{base_ref}#icl:k={icl.k},seed={icl.seed},data={data},max_chars={icl.max_chars}"
        deployed = spec.base_variant_models(base_ref)  # quantized before training: a model it cannot take fails first
        base_models.update(deployed)
        by_role = _RoleAudit(spec, set(base_models), audit, audit_kw)
        also = [*(["the ICL baseline"] if spec.icl else []), *deployed]
        with steps.step(f"audit the base model{' and ' + ', '.join(also) if also else ''}"):
            by_role(base_models, main_suites, out / "steps" / "audit-base")
        models.update(base_models)

        ck = spec.checkpoints
        ck_suites = _task_options(_suites(ck.suites, {s: ck.limit for s in suite_names(ck.suites)}), train) if ck else []

        def guard(stage: Stage) -> list[SafetyStop]:
            """Audit each checkpoint as the stage saves it, under the label the checkpoint step gives it."""
            if ck is None or not ck.stop_when:
                return []
            return [SafetyStop(store=store, run_id=run_id, base=base_ref, suites=suite_names(ck.suites),
                               rules=ck.stop_when, tune_dir=Path(str(stage.config.out)),
                               label_prefix=stage.checkpoint_prefix,
                               audit_fn=lambda m: by_role(m, ck_suites, out / "steps" / "audit-checkpoints"))]

        def tune_step(stage: Stage) -> AbstractContextManager[None]:
            cfg = stage.config
            return steps.step(f"fine-tune {cfg.label()} ({cfg.method}/{cfg.objective} on {cfg.data}) from {cfg.model}")

        tuned_chain = tune_stages(spec.tune_configs(), model=spec.base, out=out / "tune", store=store, run_id=run_id,
                                  progress=progress, stage_callbacks=guard, around_stage=tune_step)
        for stage, result in zip(tuned_chain.plan, tuned_chain.stages, strict=True):
            stop = record_early_stop(store, run_id, result, stage.step_offset)
            if stop:
                say(f"    {stage.config.label()} stopped at step {stop['train_step']} of {stop['max_steps']}: "
                    f"{stop['violations'][0]}")
            label = "tuned" if stage is tuned_chain.plan[-1] else stage.config.label()
            models[label] = result.model_ref
        checkpoints = tuned_chain.checkpoints()  # (label, path, step on the chain's training axis)

        tuned = {label: ref for label, ref in models.items() if label not in base_models}
        with steps.step("audit the tuned model" + ("s" if len(tuned) > 1 else "")):
            by_role(tuned, main_suites, out / "steps" / "audit-tuned")

        variants = spec.variant_models(models["tuned"])
        if variants:
            with steps.step(f"audit {len(variants)} variant(s) of the tuned model ({', '.join(spec.variants)})"):
                by_role(variants, main_suites, out / "steps" / "audit-variants")
            models.update(variants)
        to_export = [*deployed, *(variant_label(v) for v in spec.deployment_variants())]
        if to_export:
            with steps.step(f"write {len(to_export)} quantized model(s) to the run folder's {QUANTIZED_DIR}/"):
                _export_quantized(store, run_id, to_export, out, say)

        if ck is not None and checkpoints:
            curve = {"base": base_ref, **{label: path for label, path, _ in checkpoints}, "tuned": models["tuned"]}
            for label, _, step in checkpoints:
                store.add_event(run_id, f"checkpoint:{label}", "checkpoint", {"label": label, "step": step})
            with steps.step(f"audit {len(checkpoints)} checkpoints ({', '.join(suite_names(ck.suites))}, {ck.limit} items)"):
                by_role(curve, ck_suites, out / "steps" / "audit-checkpoints")
            _tag_steps(store, run_id, {label: step for label, _, step in checkpoints})
            if ck.select is not None:
                with steps.step("choose the model to keep (checkpoints.select)"):
                    choice = choose_checkpoint(store, run_id, ck.select, suite_names(ck.suites),
                                               [(label, step) for label, _, step in checkpoints]
                                               + [("tuned", tuned_chain.final_step)])
                    say(f"    {choice['reason']}")

        with steps.step("compare and write the reports"):
            results = write_reports(store, run_id, out, reference="base", thresholds=spec.gate or None)
        violations = check(results, spec.gate) if spec.gate else []
    say(f"report: {out / 'report.html'}  (summary: {out / 'report.md'})")
    if own_store:
        store.close()
    return PipelineResult(run_id, out, results, violations, models)


class _RoleAudit:
    """`audit` with each model on its role's engine (spec.engines): the base labels on the base's, the rest
    (tuned, checkpoints, variants) on the tuned model's; one audit call per distinct engine."""

    def __init__(self, spec: PipelineSpec, base_labels: set[str], audit_fn: Callable[..., Any],
                 audit_kw: dict[str, Any]) -> None:
        self.base_labels, self.audit_fn, self.audit_kw = base_labels, audit_fn, audit_kw
        self.engines = {role: getattr(spec.engines, role).audit_kwargs(spec.audit.dtype) for role in ("base", "tuned")}

    def __call__(self, models: dict[str, str], suites: list[tuple[str, dict[str, Any]]], out_dir: Path) -> None:
        groups: list[tuple[dict[str, Any], dict[str, str]]] = []
        for label, ref in models.items():
            engine = self.engines["base" if label in self.base_labels else "tuned"]
            group = next((g for e, g in groups if e == engine), None)
            if group is None:
                groups.append((engine, group := {}))
            group[label] = ref
        for engine, group in groups:
            self.audit_fn(group, suites, out_dir=out_dir, **self.audit_kw, **engine)


def _reward_models(spec: PipelineSpec, store: Store, run_id: str, out: Path, progress: bool,
                   say: Callable[[str], None]) -> PipelineSpec:
    """Train the spec's reward models and return the spec with their folders for `@NAME`; each one's held-out
    pairwise accuracy goes to the report's judges table, as a judge's own accuracy does."""
    from aftertune import reward_refs

    def trained(name: str, metrics: dict[str, Any]) -> None:
        acc = metrics.get("pairwise_accuracy") or {}
        if acc:
            say(f"    @{name}: held-out pairwise accuracy {acc['accuracy']:.3f} on {acc['pairs']} pairs "
                f"(95% CI {acc['ci95'][0]:.3f}-{acc['ci95'][1]:.3f})")
        if not any(e["step"] == f"reward:{name}" for e in store.events(run_id, kind="judge_validity")):
            from aftertune.judges.reward_model import RewardModelJudge

            data = spec.reward_models[name].get("data")
            sets = [{"set": f"held-out pairs of {data}", "source": str(data), "label_kind": "pairs",
                     "labels_from": "chosen/rejected", "n": acc["pairs"], "accuracy": acc["accuracy"],
                     "accuracy_ci95": acc["ci95"], "kappa": None, "precision": None, "recall": None,
                     "auroc": None}] if acc else []
            judge = RewardModelJudge(out / reward_refs.FOLDER / name)
            store.add_event(run_id, f"reward:{name}", "judge_validity",
                            {"role": f"reward model @{name}", "judge": f"reward-model:{judge.path}",
                             "fingerprint": judge.fingerprint, "sets": sets,
                             "note": "pairwise accuracy (chosen scored above rejected): not measured"})

    return reward_refs.resolve(spec, reward_refs.train(spec, out, store=store, progress=progress, on_trained=trained))


def _planned_limits(spec: PipelineSpec, say: Callable[[str], None]) -> dict[str, int]:
    """The spec's limits, raised where an `audit.power` target needs more items (each plan printed)."""
    a = spec.audit
    if not a.power:
        return a.limits
    from aftertune.sample_size import plan, sized_limits
    from aftertune.suites.spec import suite_names

    plans = plan(a.power, suite_names(a.suites), a.judges, a.limits, a.power_discordance, a.power_max_items)
    for p in plans:
        say(f"    power plan: {p.line()}")
    return sized_limits(a.limits, plans)


def _export_quantized(store: Store, run_id: str, labels: list[str], out: Path, say: Callable[[str], None]) -> None:
    """Each deployment variant's audited files into `out/quantized/<label>/`, so the user deploys exactly what
    the report describes; the model's info names that folder (relative to the run folder) for the report."""
    from aftertune.variants.deploy import artefact_path, export_artefact

    for m in store.models(run_id):
        if m["label"] not in labels:
            continue
        src = artefact_path(m["info"])
        if src is None or not src.exists():
            say(f"    {m['label']}: its engine names no quantized file here; nothing written to {QUANTIZED_DIR}/")
            continue
        rel = f"{QUANTIZED_DIR}/{m['label']}"
        export_artefact(src, out / rel)
        if m["info"].get("run_folder") != rel:
            store.add_model(run_id, m["label"], m["ref"], m["fingerprint"], {**m["info"], "run_folder": rel})


def _tag_steps(store: Store, run_id: str, steps: dict[str, int]) -> None:
    """Give each audited checkpoint its training step (the audit records engine info only), for the curves."""
    for m in store.models(run_id):
        step = steps.get(m["label"])
        if step is not None and m["info"].get("step") != step:
            store.add_model(run_id, m["label"], m["ref"], m["fingerprint"], {**m["info"], "step": step})


def _scan(store: Store, run_id: str, data: str, out: Path, say: Callable[[str], None],
          suites: list[tuple[str, dict[str, Any]]]) -> None:
    """Scan the training rows; the findings go to scan.json/scan.md and the store (for the report and gate).

    Contamination is checked against every registered suite, and those this run evaluates with the
    run's options (less its sample size): `ood:exclude=nli-fewshot` has left the training items out,
    so overlap with them is no risk to this run's numbers. The task suite's held-out rows are checked
    when they are the user's own (`train.eval_data`); a built-in set's split is disjoint by
    construction and its templated phrasing is shared on purpose.
    """
    from aftertune import trainsets
    from aftertune.scan import scan_source
    from aftertune.scan.contamination import registered_suites

    run = {name: {k: v for k, v in options.items() if k != "limit"} for name, options in suites
           if not (name == "task" and trainsets.is_builtin(data))}
    report = scan_source(data, suites=[(name, run.get(name, {})) for name in registered_suites()])
    report.write(out)
    store.add_event(run_id, "scan", "scan", report.to_json())
    say(f"    {report.summary_line()}")
