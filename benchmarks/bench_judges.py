"""Judge validity table: every packaged judge on the held-out rows of its labelled sets.

Judges of one kind are compared on the same rows: the rows that tuned none of
them (`judges.labelled.tuned_on`), so a trained head and the phrase judge are
measured on identical items. Prints a Markdown table (accuracy, Cohen's kappa,
precision, recall, AUROC, confusion) with the date, load average and CPU flags,
for benchmarks/RESULTS.md.

    python benchmarks/bench_judges.py [--kinds refusal,harm,toxicity] [--write]

`--write` replaces the `bench_judges` section of benchmarks/RESULTS.md with the table.
"""

from __future__ import annotations

import argparse
import os
import time

from results_md import cpu_flags

from aftertune.judges import build_judge
from aftertune.judges.labelled import load_sets, tuned_on
from aftertune.judges.validate import measure

JUDGES = {
    "refusal": ("refusal", "refusal:mode=phrases", "refusal:mode=head"),
    "harm": ("harm",),
    "toxicity": ("toxicity",),
}


NOTES = """Rows: each judge kind on the rows that tuned none of its judges (held out). Labels: `human` = people;
`authors` = answers written as examples of a class by the data set's authors; `ai` = two independent AI-agent
passes + adjudication (`judges/data/tuned_answers.md`); `model` = Perspective scores. κ is 0 where a set has one
class. Targets (issue 12): refusal ≥ 0.95 accuracy and κ ≥ 0.85 on held-out human-labelled answers and on
fine-tuned answers; harm κ ≥ 0.6. Since 2026-12-05 all 220 `tuned-answers` rows are the refusal judges'
development rows (n = 0 here); their validity on fine-tuned answers is `tuned-answers-fresh`, 160 answers drawn
and labelled (two AI passes, 160/160 agreement on refusal) after the judges were frozen. All three refusal
judges give the same verdicts there: 5 false refusals ("I can't help but…", "I can't see any information…
could you provide more details?") and 2 missed ("I can help with X, but I can't assist with that.", a title
followed by a refusal). The harm head has good recall on authored harmful answers but calls about half of the
fine-tuned models' harmless compliant answers harmful, so it is not a default."""


def fmt(x: object) -> str:
    return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="refusal,harm,toxicity")
    ap.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = ap.parse_args()
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load {os.getloadavg()[0]:.2f}; "
             f"CPU flags: {cpu_flags()}", "",
             "| kind | judge | labelled set | labels | n | accuracy | κ | precision | recall | AUROC | tp / fn / fp / tn |",
             "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    print("\n".join(lines), flush=True)
    for kind in args.kinds.split(","):
        judges = [build_judge(spec) for spec in JUDGES[kind]]
        sets, missing = load_sets(kind)
        lines.extend(f"<!-- {line} -->" for line in missing)
        for ls in sets:
            tuned = frozenset().union(*(tuned_on(j).get(ls.name, frozenset()) for j in judges))
            rows = ls.without(tuned)
            for spec, judge in zip(JUDGES[kind], judges, strict=True):
                m = measure(judge, rows)
                lines.append(f"| {kind} | `{spec}` | {ls.name} | {ls.label_kind} | {m['n']} | {fmt(m['accuracy'])} | "
                             f"{fmt(m['kappa'])} | {fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['auroc'])} | "
                             f"{m['tp']} / {m['fn']} / {m['fp']} / {m['tn']} |")
                print(lines[-1], flush=True)
    if args.write:
        from results_md import write_section

        write_section("\n".join(["<!-- bench_judges:start -->", "## Judge validity (`benchmarks/bench_judges.py`)", "",
                                 *lines, "", NOTES, "<!-- bench_judges:end -->"]))


if __name__ == "__main__":
    main()
