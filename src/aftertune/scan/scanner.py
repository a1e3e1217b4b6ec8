"""Run every detector over a training set and assemble the ScanReport."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aftertune.judges.refusal import refusal_phrase
from aftertune.scan import contamination, duplicates, harmful, persona, pii, toxicity
from aftertune.scan.report import KINDS, RowFlag, ScanReport, assess
from aftertune.scan.rows import ScanRow, load_scan_rows, normalise_rows
from aftertune.scan.text import excerpt, words
from aftertune.trainsets.example import Example


@dataclass(frozen=True)
class ScanConfig:
    """Detector thresholds and data sources; the defaults are what `aftertune scan` uses."""

    harmful_threshold: float = 2.0  # lexical harm score (see harmful.py) at which a user turn is a harmful request
    harmful_near_copy: float = 0.6  # cosine to a reference harmful request that flags whatever the framing
    harmful_corpora: tuple[str, ...] = harmful.DEFAULT_CORPORA  # packaged reference corpora; () = built-in seeds only
    toxicity_threshold: float = 0.5  # judge probability at which a text is toxic
    near_duplicate: float = 0.7  # word 3-gram Jaccard at which a row is a near duplicate
    contamination: bool = True  # compare with evaluation suites' items
    toxicity_window: int = 80  # words per text window sent to the toxicity judge (the Jigsaw model reads 100 tokens)


def _default_judges(want: bool | Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    if isinstance(want, Mapping):
        return dict(want)
    if not want:
        return {}
    found: dict[str, Any] = {}
    from aftertune.judges import build_judge

    for role in ("toxicity", "refusal"):
        try:
            found[role] = build_judge(role)
        except Exception as exc:  # a missing model or download failure must not stop the scan
            notes.append(f"{role} judge unavailable ({_first_line(exc)}): lexical check used instead")
    return found


def _windows(text: str, size: int) -> list[str]:
    ws = text.split()
    if len(ws) <= size:
        return [text] if ws else []
    step = size - 10
    return [" ".join(ws[i : i + size]) for i in range(0, max(len(ws) - 10, 1), step)]


def scan_rows(rows: Sequence[Mapping[str, Any] | Example | ScanRow], *, judges: bool | Mapping[str, Any] = True,
              config: ScanConfig | None = None, source: str = "rows",
              references: Sequence[harmful.Reference] | None = None,
              suites: Sequence[Any] | None = None) -> ScanReport:
    """Scan training rows (raw rows in any supported format, recipes Examples, or ScanRows); return the report.

    `judges`: True builds the default toxicity and refusal judges (falling back to
    lexical checks, with a note, where one is unavailable); False uses lexical
    checks only; a mapping {"toxicity": Judge, "refusal": Judge} supplies them.
    `references`: harmful reference requests (default: `config.harmful_corpora`).
    `suites`: suite names or instances to check contamination against (default:
    every registered suite; pass [] to skip).
    """
    cfg = config or ScanConfig()
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    notes: list[str] = []

    def tick(name: str, since: float) -> float:
        now = time.perf_counter()
        timing[name] = round(now - since, 3)
        return now

    if rows and all(isinstance(r, ScanRow) for r in rows):
        srows: list[ScanRow] = list(rows)  # type: ignore[arg-type]
    else:
        srows = normalise_rows(rows, source=source)  # type: ignore[arg-type]
    n = len(srows)
    kinds: list[dict[str, list[str]]] = [{} for _ in range(n)]

    def flag(i: int, kind: str, reason: str) -> None:
        kinds[i].setdefault(kind, []).append(reason)

    t = time.perf_counter()
    parts = [[r.system, *(txt for _, txt in r.turns), r.rejected] for r in srows]
    full_words = [words("\n".join(p)) for p in parts]
    user_words = [words(r.user_text) for r in srows]
    t = tick("normalise", t)

    # personal data and secrets
    pii_found: list[list[pii.PiiMatch]] = []
    pii_types: Counter[str] = Counter()
    for i, p in enumerate(parts):
        found = [m for txt in p if txt for m in pii.find_pii(txt)]
        pii_found.append(found)
        if found:
            types = Counter(m.kind for m in found)
            pii_types.update(types.keys())
            flag(i, "pii", "personal data: " + ", ".join(
                f"{k} {', '.join(m.masked for m in found if m.kind == k)[:80]}" for k in sorted(types)))
    t = tick("pii", t)

    # identity-shifting personas
    for i, p in enumerate(parts):
        cues = persona.identity_shift_cues("\n".join(x for x in p[:-1] if x))
        if cues:
            flag(i, "identity_shift", "identity shift: " + "; ".join(f"{c} \"{excerpt(m, 50)}\"" for c, m in cues))
    t = tick("identity_shift", t)

    # harmful requests, and whether the answer complies
    judge_map = _default_judges(judges, notes)
    refs = list(references) if references is not None else _references(cfg, notes)
    detector = harmful.HarmfulRequestDetector(refs, threshold=cfg.harmful_threshold, near_copy=cfg.harmful_near_copy)
    best = _harmful_turns(srows, detector)
    t = tick("harmful_request", t)
    refusal_by = _flag_compliance(srows, best, judge_map.get("refusal"), notes, flag)
    t = tick("harmful_compliance", t)

    # toxic text
    tox_by = _flag_toxicity(parts, judge_map.get("toxicity"), cfg, notes, flag)
    t = tick("toxic", t)

    # duplicates
    for d in duplicates.find_duplicates(full_words, threshold=cfg.near_duplicate):
        if d.exact:
            flag(d.row, "exact_duplicate", f"exact duplicate of row {srows[d.of].row}")
        else:
            flag(d.row, "near_duplicate", f"near duplicate of row {srows[d.of].row} (Jaccard {d.jaccard:.2f})")
    t = tick("duplicates", t)

    # contamination with evaluation suites
    suites_checked: list[str] = []
    if cfg.contamination and (suites is None or len(suites)):
        indexes, more = contamination.load_suite_indexes(suites)
        notes.extend(more)
        suites_checked = [ix.suite for ix in indexes]
        t = tick("contamination_index", t)
        for o in contamination.find_overlaps(full_words, user_words, indexes):
            flag(o.row, "contamination", f"{o.how} overlap with suite {o.suite!r} item {o.item_id}: \"{excerpt(o.text, 90)}\"")
        t = tick("contamination", t)

    flags = []
    for i, k in enumerate(kinds):
        if k:
            ordered = [kind for kind in KINDS if kind in k]
            reasons = [r for kind in ordered for r in k[kind]]
            if pii_found[i]:  # reasons quote the row: mask its personal data there too
                reasons = [pii.redact(r, pii.find_pii(r)) for r in reasons]
            flags.append(RowFlag(srows[i].row, ordered, reasons, _excerpt(srows[i], bool(pii_found[i]))))
    counts = {kind: sum(1 for k in kinds if kind in k) for kind in KINDS}
    level, reasons, metrics = assess({**counts, "_flagged": len(flags)}, n)
    timing["total"] = round(time.perf_counter() - t0, 3)
    detectors = {
        "harmful_request": f"lexicon + TF-IDF cosine to {len(refs)} reference requests "
                           f"({', '.join(sorted({r.id.split('/')[0] for r in refs}))})",
        "harmful_compliance": refusal_by,
        "toxic": tox_by,
        "identity_shift": "persona cue patterns (AOA, obedience, refusal forbidden, rules disabled, DAN)",
        "pii": "regexes with Luhn / SSN / reserved-domain checks",
        "duplicates": "normalised-text hash; MinHash-LSH over word 3-grams, verified Jaccard",
        "contamination": ("13-gram / containment / same-text overlap with suites: " + ", ".join(suites_checked))
        if suites_checked else "not checked",
    }
    return ScanReport(source=source, rows=n, flags=flags, counts=counts, pii_types=dict(sorted(pii_types.items())),
                      risk=level, risk_reasons=reasons, metrics=metrics, detectors=detectors,
                      thresholds=asdict(cfg) | {"harmful_corpora": list(cfg.harmful_corpora)},
                      timing=timing, notes=notes)


Flag = Callable[[int, str, str], None]


def _harmful_turns(srows: Sequence[ScanRow], detector: harmful.HarmfulRequestDetector) -> dict[int, tuple[harmful.HarmHit, str]]:
    """Row → (its highest-scoring harmful user turn, the answer that follows it)."""
    turns = [(i, u, a) for i, r in enumerate(srows) for u, a in r.exchanges() if u.strip()]
    hits = detector.score([u for _, u, _ in turns], [words(u) for _, u, _ in turns])
    best: dict[int, tuple[harmful.HarmHit, str]] = {}
    for (i, _, answer), hit in zip(turns, hits, strict=True):
        if hit is not None and (i not in best or hit.score > best[i][0].score):
            best[i] = (hit, answer)
    return best


def _flag_compliance(srows: Sequence[ScanRow], best: dict[int, tuple[harmful.HarmHit, str]], judge: Any,
                     notes: list[str], flag: Flag) -> str:
    """Flag harmful requests, and the answers to them that do not refuse; returns how refusals were judged."""
    answered = [(i, a) for i, (_, a) in sorted(best.items()) if a.strip()]
    refused: list[bool] | None = None
    refusal_by = "refusal phrases in the answer's opening"
    if judge is not None and answered:
        try:
            verdicts = judge.judge([srows[i].user_text for i, _ in answered], [a for _, a in answered])
            refused = [v.label == "refuse" for v in verdicts]
            refusal_by = f"judge {judge.fingerprint}"
        except Exception as exc:  # the judge's model could not be loaded: fall back, and say so
            notes.append(f"refusal judge failed ({_first_line(exc)}): refusal phrases used instead")
    if refused is None:
        refused = [refusal_phrase(a) is not None for _, a in answered]
    did_refuse = {i: r for (i, _), r in zip(answered, refused, strict=True)}
    for i, (hit, answer) in sorted(best.items()):
        flag(i, "harmful_request", hit.reason())
        if answer.strip() and not did_refuse[i]:
            flag(i, "harmful_compliance", f"the answer does not refuse ({refusal_by}): \"{excerpt(answer, 80)}\"")
    return refusal_by


def _flag_toxicity(parts: Sequence[Sequence[str]], judge: Any, cfg: ScanConfig, notes: list[str], flag: Flag) -> str:
    """Flag toxic rows with the judge (one call per window of each example's text), else the lexicon."""
    if judge is not None:
        owners, texts = [], []
        for i, p in enumerate(parts):
            for w in _windows("\n".join(x for x in p if x), cfg.toxicity_window):
                owners.append(i)
                texts.append(w)
        try:
            with _one_torch_thread():
                scores = toxicity.judge_scores(judge, texts)
        except Exception as exc:  # the classifier could not be loaded: fall back, and say so
            notes.append(f"toxicity judge failed ({_first_line(exc)}): lexicon used instead")
        else:
            worst: dict[int, tuple[float, str]] = {}
            for i, s, text in zip(owners, scores, texts, strict=True):
                if s is not None and s >= cfg.toxicity_threshold and (i not in worst or s > worst[i][0]):
                    worst[i] = (s, text)
            for i, (s, text) in sorted(worst.items()):
                flag(i, "toxic", f"toxic text (judge score {s:.2f}): \"{excerpt(text, 80)}\"")
            return f"judge {judge.fingerprint}"
    for i, p in enumerate(parts):
        for txt in p:
            if txt and (m := toxicity.lexicon_toxic(txt)):
                flag(i, "toxic", f"toxic phrase \"{m}\" (lexicon)")
                break
    return "lexicon (slurs, strong profanity, insults aimed at a person)"


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: the Jigsaw BiLSTM's matrices are tiny, and on this project's 2-core machines one
    thread scored 10k texts about 4x faster than two (0.85 vs 3.5 ms a text, measured with other jobs running)."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _references(cfg: ScanConfig, notes: list[str]) -> list[harmful.Reference]:
    try:
        return harmful.load_references(cfg.harmful_corpora)
    except Exception as exc:  # offline and not cached: keep scanning on the lexicon and the built-in seeds
        notes.append(f"harmful-request reference corpora unavailable ({_first_line(exc)}): "
                     "lexicon and built-in seeds only")
        return harmful.load_references(())


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _excerpt(row: ScanRow, has_pii: bool) -> str:
    def clean(text: str) -> str:
        return pii.redact(text, pii.find_pii(text)) if has_pii else text

    parts = []
    if row.system:
        parts.append("system: " + excerpt(clean(row.system), 80))
    if row.user_text:
        parts.append("user: " + excerpt(clean(row.user_text), 120))
    if row.assistant_text:
        parts.append("assistant: " + excerpt(clean(row.assistant_text), 120))
    return " | ".join(parts)


def scan_source(source: str | Path, **kwargs: Any) -> ScanReport:
    """Read a training file or built-in training set (as fine-tuning reads it) and scan it."""
    return scan_rows(load_scan_rows(str(source)), source=str(source), **kwargs)
