"""Scan a training set before fine-tuning on it: what in the data could break the model.

Per example, flags with reasons: harmful requests and compliant answers to them,
identity-shifting / unconditional-obedience personas (Qi et al. 2023, tier 2),
toxic text, personal data and secrets, exact and near duplicates, and overlap
with evaluation suites (contamination). The report carries counts, a risk
level (rule in `report.RISK_RULE`) and `metrics` named `scan.*` for the gate.

Public API:

    scan_rows(rows, *, judges=True, config=None, ...) -> ScanReport
    scan_source(path_or_trainset, **kwargs) -> ScanReport
    ScanReport.to_json() / .summary_line() / .summary_lines() / .to_markdown()
    ScanReport.write(out_dir)  # scan.json + scan.md, atomically

One module per detector family: `pii`, `persona`, `harmful` (+ `lexicon`,
`vectors`), `toxicity`, `duplicates`, `contamination`; `rows` reads training
data exactly as fine-tuning does (`recipes.data`) and flattens each example to
(system, user turns, assistant turns).
"""

from aftertune.scan.report import KIND_TITLES, KINDS, RISK_RULE, SUGGESTED_THRESHOLDS, RowFlag, ScanReport
from aftertune.scan.rows import ScanRow, load_scan_rows, normalise_rows
from aftertune.scan.scanner import ScanConfig, scan_rows, scan_source

__all__ = [
    "KINDS",
    "KIND_TITLES",
    "RISK_RULE",
    "SUGGESTED_THRESHOLDS",
    "RowFlag",
    "ScanConfig",
    "ScanReport",
    "ScanRow",
    "load_scan_rows",
    "normalise_rows",
    "scan_rows",
    "scan_source",
]
