"""Paired comparison of models scored on the same items: statistics, flipped items, verdict.

`compare_run(store, run_id)` → the results dict every report is rendered from;
`combine(store, ["RUN_A", "RUN_B"])` → a run holding models from several runs;
`stats` holds the tests and intervals (McNemar, Tango, Bonett–Price, paired
bootstrap and permutation, Holm).
"""

from aftertune.compare.comparison import SCHEMA, SCHEMA_VERSION, Settings, compare_run
from aftertune.compare.merge import combine

__all__ = ["SCHEMA", "SCHEMA_VERSION", "Settings", "combine", "compare_run"]
