"""The scan report: per-row flags, counts, risk level, gate metrics; JSON and Markdown.

Risk level (RISK_RULE):

- high: compliant answers to harmful requests in ≥ 3 rows or ≥ 1% of rows,
  any identity-shifting / unconditional-obedience persona, or toxic text in
  ≥ 5% of rows. Qi et al. (2023) broke a model's safety with 10 harmful pairs,
  and with 10 identity-shifting examples containing no harmful content at all.
  One or two flagged pairs in a large set are as likely to be the detector's
  false positives (about 0.1–0.5% of benign questions, benchmarks/RESULTS.md),
  so they make the risk medium and are listed for a look.
- medium: any other harmful request or compliant answer, toxic text, personal
  data or secret, contamination with an evaluation suite, or duplicates in
  ≥ 10% of rows.
- low: none of the above (a few duplicates may remain).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aftertune.fileio import write_json_atomic, write_text_atomic

KINDS = ("harmful_request", "harmful_compliance", "identity_shift", "toxic", "pii", "exact_duplicate",
         "near_duplicate", "contamination")
KIND_TITLES = {
    "harmful_request": "harmful request",
    "harmful_compliance": "compliant answer to a harmful request",
    "identity_shift": "identity-shifting / obedience persona",
    "toxic": "toxic text",
    "pii": "personal data or secret",
    "exact_duplicate": "exact duplicate",
    "near_duplicate": "near duplicate",
    "contamination": "overlap with an evaluation suite",
}
RISK_RULE = (
    "high: compliant answers to harmful requests in >= 3 rows or >= 1% of rows, any identity-shifting persona, "
    "or toxic text in >= 5% of rows; medium: any other harmful request or compliant answer, toxic text, personal "
    "data, contamination, or duplicates in >= 10% of rows; low: otherwise"
)
HIGH_COMPLIANCE_ROWS = 3
HIGH_COMPLIANCE_RATE = 0.01
HIGH_TOXIC_RATE = 0.05
MEDIUM_DUPLICATE_RATE = 0.10

# Gate thresholds that reproduce the "no high or medium risk" reading of a scan
# (use in a spec's gate: section, e.g. `scan.harmful_compliance_rows: {max: 0}`).
SUGGESTED_THRESHOLDS: dict[str, dict[str, float]] = {
    "scan.harmful_compliance_rows": {"max": 0},
    "scan.identity_shift_rows": {"max": 0},
    "scan.harmful_rate": {"max": 0.01},
    "scan.toxic_rate": {"max": 0.01},
    "scan.pii_rows": {"max": 0},
    "scan.contamination_rows": {"max": 0},
    "scan.duplicate_rate": {"max": MEDIUM_DUPLICATE_RATE},
}


@dataclass
class RowFlag:
    row: int  # 1-based position of the example in its source (as training errors number rows)
    kinds: list[str]
    reasons: list[str]
    excerpt: str  # personal data masked


@dataclass
class ScanReport:
    source: str
    rows: int
    flags: list[RowFlag]
    counts: dict[str, int]
    pii_types: dict[str, int]
    risk: str
    risk_reasons: list[str]
    metrics: dict[str, float]
    detectors: dict[str, str]
    thresholds: dict[str, Any]
    timing: dict[str, float]
    notes: list[str] = field(default_factory=list)
    risk_rule: str = RISK_RULE

    @property
    def flagged_rows(self) -> int:
        return len(self.flags)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["flagged_rows"] = self.flagged_rows
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanReport:
        d = {k: v for k, v in d.items() if k != "flagged_rows"}
        d["flags"] = [RowFlag(**f) for f in d.get("flags", [])]
        return cls(**d)

    def summary_line(self) -> str:
        """One line: rows, flagged rows, risk, and the kinds found."""
        found = ", ".join(f"{KIND_TITLES[k]} {n}" for k in KINDS if (n := self.counts.get(k, 0)))
        return (f"scan: {self.rows} rows, {self.flagged_rows} flagged, risk {self.risk}"
                + (f" ({found})" if found else ""))

    def summary_lines(self) -> list[str]:
        width = max(len(t) for t in KIND_TITLES.values())
        lines = [f"scanned {self.rows} rows of {self.source} in {self.timing.get('total', 0.0):.1f} s: "
                 f"{self.flagged_rows} flagged, risk {self.risk.upper()}"]
        for kind in KINDS:
            n = self.counts.get(kind, 0)
            pct = 100.0 * n / self.rows if self.rows else 0.0
            extra = ""
            if kind == "pii" and self.pii_types:
                extra = "  (" + ", ".join(f"{k} {v}" for k, v in sorted(self.pii_types.items())) + ")"
            lines.append(f"  {KIND_TITLES[kind]:<{width}}  {n:>6}  {pct:5.1f}%{extra}")
        lines.extend(f"  risk: {r}" for r in self.risk_reasons)
        return lines

    def to_markdown(self, max_rows: int = 200) -> str:
        out = [f"# Training data scan: {self.source}", "",
               f"**Risk: {self.risk}** — {self.rows} rows, {self.flagged_rows} flagged, "
               f"{self.timing.get('total', 0.0):.1f} s.", ""]
        out += [f"- {r}" for r in self.risk_reasons] + ([""] if self.risk_reasons else [])
        out += ["| kind | rows | share |", "|---|---:|---:|"]
        for kind in KINDS:
            n = self.counts.get(kind, 0)
            out.append(f"| {KIND_TITLES[kind]} | {n} | {100.0 * n / self.rows if self.rows else 0:.1f}% |")
        if self.pii_types:
            out += ["", "Personal data by type: " + ", ".join(f"{k} {v}" for k, v in sorted(self.pii_types.items()))]
        out += ["", "## Gate metrics", "", "| metric | value |", "|---|---:|"]
        out += [f"| `{k}` | {v:g} |" for k, v in sorted(self.metrics.items())]
        out += ["", "## Detectors", ""] + [f"- {k}: {v}" for k, v in sorted(self.detectors.items())]
        if self.notes:
            out += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        out += ["", f"## Flagged rows ({self.flagged_rows})", ""]
        if self.flags:
            out += ["| row | kinds | reasons | excerpt |", "|---:|---|---|---|"]
            for f in self.flags[:max_rows]:
                out.append(f"| {f.row} | {', '.join(f.kinds)} | {_md('<br>'.join(f.reasons))} | {_md(f.excerpt)} |")
            if self.flagged_rows > max_rows:
                out.append(f"\n{self.flagged_rows - max_rows} more in scan.json.")
        else:
            out.append("None.")
        out += ["", f"Risk rule: {self.risk_rule}.", ""]
        return "\n".join(out)

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write scan.json and scan.md atomically into `out_dir`."""
        out = Path(out_dir)
        write_json_atomic(out / "scan.json", self.to_json())
        write_text_atomic(out / "scan.md", self.to_markdown())
        return out / "scan.json", out / "scan.md"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def assess(counts: dict[str, int], rows: int) -> tuple[str, list[str], dict[str, float]]:
    """(risk level, the reasons for it, gate metrics) from per-kind row counts."""
    def rate(n: int) -> float:
        return n / rows if rows else 0.0

    dup_rows = counts.get("exact_duplicate", 0) + counts.get("near_duplicate", 0)
    metrics = {
        "scan.rows": float(rows),
        "scan.flagged_rows": float(counts.get("_flagged", 0)),
        "scan.harmful_rows": float(counts.get("harmful_request", 0)),
        "scan.harmful_rate": rate(counts.get("harmful_request", 0)),
        "scan.harmful_compliance_rows": float(counts.get("harmful_compliance", 0)),
        "scan.identity_shift_rows": float(counts.get("identity_shift", 0)),
        "scan.toxic_rows": float(counts.get("toxic", 0)),
        "scan.toxic_rate": rate(counts.get("toxic", 0)),
        "scan.pii_rows": float(counts.get("pii", 0)),
        "scan.duplicate_rows": float(dup_rows),
        "scan.duplicate_rate": rate(dup_rows),
        "scan.contamination_rows": float(counts.get("contamination", 0)),
    }
    high, medium = [], []
    complied = counts.get("harmful_compliance", 0)
    if complied >= HIGH_COMPLIANCE_ROWS or (complied and rate(complied) >= HIGH_COMPLIANCE_RATE):
        high.append(f"{complied} row(s) answer a harmful request compliantly")
    elif complied:
        medium.append(f"{complied} row(s) answer a harmful request compliantly (below the high-risk bar of "
                      f"{HIGH_COMPLIANCE_ROWS} rows or {100 * HIGH_COMPLIANCE_RATE:.0f}%: look at them)")
    if counts.get("identity_shift"):
        high.append(f"{counts['identity_shift']} row(s) carry an identity-shifting / obedience persona")
    if rate(counts.get("toxic", 0)) >= HIGH_TOXIC_RATE:
        high.append(f"toxic text in {100 * rate(counts['toxic']):.1f}% of rows (>= {100 * HIGH_TOXIC_RATE:.0f}%)")
    elif counts.get("toxic"):
        medium.append(f"{counts['toxic']} row(s) with toxic text")
    refused = counts.get("harmful_request", 0) - counts.get("harmful_compliance", 0)
    if refused > 0:
        medium.append(f"{refused} harmful request(s) with a refusal or no answer")
    if counts.get("pii"):
        medium.append(f"{counts['pii']} row(s) with personal data or secrets")
    if counts.get("contamination"):
        medium.append(f"{counts['contamination']} row(s) overlap evaluation suite items")
    if rate(dup_rows) >= MEDIUM_DUPLICATE_RATE:
        medium.append(f"duplicates in {100 * rate(dup_rows):.1f}% of rows (>= {100 * MEDIUM_DUPLICATE_RATE:.0f}%)")
    level = "high" if high else "medium" if medium else "low"
    return level, high + medium, metrics
