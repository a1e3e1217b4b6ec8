"""Paired comparison of models scored on the same items: statistics, flipped items, verdict.

`compare_run(store, run_id)` → the results dict every report is rendered from
(`compare_records(records, models, run)` computes it from records alone);
`combine(store, ["RUN_A", "RUN_B"])` → a run holding models from several runs;
`stats` holds the tests and intervals (McNemar, Tango, Bonett–Price, paired
bootstrap and permutation, Holm).
"""

from aftertune.compare.comparison import SCHEMA, SCHEMA_VERSION, RunFacts, Settings, compare_records
from aftertune.compare.merge import combine
from aftertune.compare.stored_run import compare_run

__all__ = ["SCHEMA", "SCHEMA_VERSION", "RunFacts", "Settings", "combine", "compare_records", "compare_run"]
