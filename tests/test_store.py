"""The run store and the caching engine wrapper every engine call goes through."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import time
from dataclasses import replace

import pytest

from aftertune.engines.base import (
    Decoding,
    GenerateRequest,
    GenerateResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    Message,
    RollingRequest,
    RollingResult,
    TokensLoglikelihoodRequest,
)
from aftertune.errors import UserError
from aftertune.record import Record
from aftertune.store import CachedEngine, Store, cache_key
from aftertune.testing.fake_engine import FakeEngine

GEN = [
    GenerateRequest.chat("hello", system="Be brief.", decoding=Decoding(max_new_tokens=5, stop=("\n", "END"))),
    GenerateRequest(prompt="raw text", decoding=Decoding(temperature=0.7, seed=3)),
]
LL = [LoglikelihoodRequest("Q: 2+2?\nA:", " 4"), LoglikelihoodRequest("Q: 2+2?\nA:", " 5"), LoglikelihoodRequest("", "x")]
ROLL = [RollingRequest("some text to score"), RollingRequest("")]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store.sqlite")
    yield s
    s.close()


class Counting(FakeEngine):
    """FakeEngine that counts compute calls (batches) and can fail on the n-th one, like a killed process."""

    def __init__(self, *a, fail_on_call: int | None = None, **kw) -> None:
        super().__init__(*a, **kw)
        self.batches = 0
        self.fail_on_call = fail_on_call

    def _tick(self) -> None:
        self.batches += 1
        if self.fail_on_call is not None and self.batches == self.fail_on_call:
            raise KeyboardInterrupt("killed")

    def loglikelihood(self, requests, progress=None):
        self._tick()
        return super().loglikelihood(requests, progress)

    def generate(self, requests, progress=None):
        self._tick()
        out = [GenerateResult(text=f"answer to {r.prompt or r.messages[-1].content}", prompt_text="p",
                              n_prompt_tokens=3, n_new_tokens=2, finish_reason="stop") for r in requests]
        if progress:
            progress(len(requests))
        return out


# --------------------------------------------------------------------------- cache


def test_every_result_type_round_trips_through_the_store(store):
    fake = Counting()
    eng = CachedEngine(fake, store)
    first = (eng.generate(GEN), eng.loglikelihood(LL), eng.rolling_loglikelihood(ROLL))
    calls = dict(fake.calls)
    again = CachedEngine(Counting(), store)  # a fresh wrapper: everything comes from the file
    second = (again.generate(GEN), again.loglikelihood(LL), again.rolling_loglikelihood(ROLL))
    assert second == first
    assert isinstance(second[0][0], GenerateResult) and isinstance(second[1][0], LoglikelihoodResult)
    assert isinstance(second[2][0], RollingResult)
    assert again.inner.batches == 0 and again.stats == {"hits": 7, "misses": 0}
    assert fake.calls == calls and store.cache_count(fake.fingerprint) == 7


def test_sampled_token_ids_and_their_scores_round_trip(store):
    """Ids are asked for in the request (its own cache key), come back from the file as tuples, and scoring them
    is cached like any log-likelihood."""
    asked = replace(GEN[1], return_token_ids=True)
    first = CachedEngine(FakeEngine(), store).generate([asked, GEN[1]])
    exact = [TokensLoglikelihoodRequest(first[0].prompt_ids, first[0].token_ids)]
    scored = CachedEngine(FakeEngine(), store).loglikelihood_tokens(exact)
    again = CachedEngine(FakeEngine(), store)
    assert again.generate([asked, GEN[1]]) == first and again.loglikelihood_tokens(exact) == scored
    assert again.stats == {"hits": 3, "misses": 0} and again.tokenizer_id == "fake-vocabulary"
    assert again.inner.calls == {"loglikelihood": 0, "rolling": 0, "generate": 0}
    assert isinstance(first[0].token_ids, tuple) and len(first[0].token_ids) == first[0].n_new_tokens
    assert first[1].token_ids is None and first[1].text == first[0].text
    assert cache_key(again, asked.to_json()) != cache_key(again, GEN[1].to_json())


def test_key_covers_model_version_and_every_request_field(store):
    fake = FakeEngine(seed=1)
    base = GEN[0]
    keys = {
        cache_key(fake, base.to_json()),
        cache_key(fake, replace(base, decoding=replace(base.decoding, max_new_tokens=6)).to_json()),
        cache_key(fake, replace(base, decoding=replace(base.decoding, stop=("\n",))).to_json()),
        cache_key(fake, replace(base, messages=(Message("user", "hello"),)).to_json()),
        cache_key(FakeEngine(seed=2), base.to_json()),
    }
    assert len(keys) == 5
    assert cache_key(fake, base.to_json()) == cache_key(FakeEngine(seed=1), GenerateRequest.chat(
        "hello", system="Be brief.", decoding=Decoding(max_new_tokens=5, stop=("\n", "END")))
        .to_json())


def test_duplicates_in_a_call_are_computed_once_and_progress_counts_all(store):
    fake = Counting()
    seen: list[int] = []
    out = CachedEngine(fake, store).loglikelihood(LL + LL[:2], progress=seen.append)
    assert out[3] == out[0] and out[4] == out[1]
    assert fake.calls["loglikelihood"] == 3 and sum(seen) == 5
    seen.clear()
    CachedEngine(fake, store).loglikelihood(LL + LL[:2], progress=seen.append)
    assert sum(seen) == 5 and fake.calls["loglikelihood"] == 3


def test_infinite_logprobs_survive_the_round_trip(store):
    fake = Counting(score=lambda c, x: float("-inf"))
    CachedEngine(fake, store).loglikelihood(LL[:1])
    (r,) = CachedEngine(Counting(score=lambda c, x: 0.0), store).loglikelihood(LL[:1])
    assert r.logprob == float("-inf")


def test_a_killed_run_loses_at_most_the_batch_in_flight(store):
    reqs = [LoglikelihoodRequest(f"context {i}", " x") for i in range(10)]
    dying = Counting(fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        CachedEngine(dying, store, batch_size=4).loglikelihood(reqs)
    assert store.cache_count() == 8  # batches 1 and 2 were committed before batch 3 died
    resumed = Counting()
    eng = CachedEngine(resumed, store, batch_size=4)
    out = eng.loglikelihood(reqs)
    assert eng.stats == {"hits": 8, "misses": 2} and resumed.calls["loglikelihood"] == 2
    assert out == CachedEngine(Counting(), Store(store.path)).loglikelihood(reqs)


def _writer(path: str, worker: int, n: int) -> None:
    store = Store(path)
    eng = CachedEngine(Counting(seed=worker), store, batch_size=7)
    # overlapping requests (same keys from both workers for the first half) and distinct ones
    reqs = [LoglikelihoodRequest("shared" if i < n // 2 else f"w{worker}", f" {i}") for i in range(n)]
    eng.loglikelihood(reqs)
    run = store.create_run("test", f"writer {worker}", {"w": worker}, run_id=f"run-{worker}")
    for start in range(0, n, 10):
        store.put_records(run, [Record("m", "s", f"{i}", "", {"i": i}, "", {"score": 1.0}, {})
                                for i in range(start, start + 10)])
        store.add_event(run, f"step{start}", "timing", {"seconds": 0.1})
    store.close()


def test_two_processes_writing_one_store_do_not_corrupt_it(tmp_path):
    path = tmp_path / "shared.sqlite"
    Store(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 200)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    store = Store(path)
    # the two fake models have different fingerprints: 200 rows each
    assert store.cache_count("fake-model-1") == 200 and store.cache_count("fake-model-2") == 200
    assert {r.id for r in store.list_runs()} == {"run-1", "run-2"}
    assert [n for *_, n in store.record_counts()] == [200, 200]
    assert len(store.events("run-1")) == 20
    store.close()


def _opener(path: str, start_at: float) -> None:
    while time.time() < start_at:
        pass
    store = Store(path)
    store.create_run("test", "opener", {}, run_id=f"run-{os.getpid()}")
    store.close()


def test_processes_creating_one_new_store_at_once_all_succeed(tmp_path):
    """The ranks of a multi-process tune open the same not-yet-existing store in the same instant."""
    path = tmp_path / "fresh.sqlite"
    ctx = mp.get_context("spawn")
    start_at = time.time() + 3.0
    procs = [ctx.Process(target=_opener, args=(str(path), start_at)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 6
    store = Store(path)
    assert len(store.list_runs()) == 6
    store.close()


def test_hf_engine_answers_from_the_store_without_running_the_model(tiny_model_dir, store):
    from aftertune.engines.hf import HFEngine
    from aftertune.sources import resolve_model

    hf = HFEngine.from_ref(resolve_model(str(tiny_model_dir)), dtype="float32")
    eng = CachedEngine(hf, store)
    gen = [GenerateRequest.chat("hi", decoding=Decoding(max_new_tokens=4, stop=("zz",)))]
    first = (eng.generate(gen), eng.loglikelihood(LL), eng.rolling_loglikelihood(ROLL))
    hf.model = None  # any model call now fails
    again = CachedEngine(hf, store)
    assert (again.generate(gen), again.loglikelihood(LL), again.rolling_loglikelihood(ROLL)) == first
    assert again.stats["misses"] == 0
    with pytest.raises(RuntimeError, match="closed"):
        again.generate([GenerateRequest.chat("new prompt")])


# --------------------------------------------------------------------------- runs, records, events


def test_runs_records_and_events(store):
    run = store.create_run("audit", "my audit", {"a": 1}, out_dir="/tmp/x", run_id="20260101-000000-abcdef")
    assert store.create_run("audit", "other name", {"a": 2}, run_id=run) == run  # resume keeps the first
    assert store.get_run("20260101").spec == {"a": 1}  # unique prefix
    store.add_model(run, "base", "smollm2", "fp1", {"engine": "hf"})
    recs = [Record("base", "capability", str(i), "arc", {"q": i}, "", {"acc": float(i % 2)}, {"lp": [0.1]})
            for i in range(3)]
    store.put_records(run, recs)
    store.put_records(run, recs[:1])  # idempotent per (run, model, suite, item)
    assert store.records(run) == recs
    assert store.done_items(run, "base", "capability") == {"0", "1", "2"}
    assert store.record_counts(run) == [(run, "base", "capability", 3)]
    store.add_event(run, "load:base", "timing", {"seconds": 1.5})
    assert store.events(run, kind="timing")[0]["payload"] == {"seconds": 1.5}
    store.set_run_status(run, "done")
    assert [(r.id, r.status) for r in store.list_runs()] == [(run, "done")]
    assert store.models(run)[0]["fingerprint"] == "fp1"
    with pytest.raises(UserError, match="no run"):
        store.get_run("nope")


def test_a_file_that_is_not_a_store_is_a_user_error(tmp_path):
    bad = tmp_path / "notes.sqlite"
    bad.write_text("this is not a database, it is a text file that happens to be long enough " * 20)
    with pytest.raises(UserError, match="not a usable aftertune store"):
        Store(bad)
