"""The ICL variant: demonstrations reach the model, the fingerprint differs from the base, errors are clear."""

from __future__ import annotations

import pytest

from aftertune.engines import GenerateRequest, LoglikelihoodRequest, load_engine
from aftertune.errors import UserError
from aftertune.variants import split_variants
from aftertune.variants.icl import ICLEngine, draw_demos

DEMOS = [("Where is my parcel?", "It ships tomorrow."), ("Reset my password", "Click 'Forgot password'.")]


def test_split_variants_parses_options():
    base, variants = split_variants("some/model#icl:k=4,seed=2,data=support")
    assert base == "some/model"
    assert variants == [("icl", {"k": "4", "seed": "2", "data": "support"})]
    with pytest.raises(UserError, match="key=value"):
        split_variants("m#icl:k4")


def test_draw_demos_is_seeded_and_checked():
    pairs = [(f"q{i}", f"a{i}") for i in range(20)]
    assert draw_demos(pairs, 5, seed=1) == draw_demos(pairs, 5, seed=1)
    assert draw_demos(pairs, 5, seed=1) != draw_demos(pairs, 5, seed=2)
    with pytest.raises(UserError, match="only 20"):
        draw_demos(pairs, 21, seed=0)


def test_icl_engine_shows_demos_and_has_its_own_fingerprint(tiny_model_dir):
    base = load_engine(str(tiny_model_dir), batch_size=4)
    icl = ICLEngine(base, DEMOS)
    req = GenerateRequest.chat("Hello", system="Be brief.")
    shown = icl.generate([req])[0].prompt_text
    plain = base.generate([req])[0].prompt_text
    # system first, then the demonstrations as turns, then the request
    assert shown.index("Be brief.") < shown.index("Where is my parcel?") < shown.index("It ships tomorrow.")
    assert shown.rindex("Hello") > shown.index("Click 'Forgot password'.")
    assert "Where is my parcel?" not in plain
    assert icl.fingerprint != base.fingerprint
    # log-likelihood contexts carry the same demonstrations as text
    ll_icl = icl.loglikelihood([LoglikelihoodRequest("Question: 2+2?\nAnswer:", " four")])[0]
    ll_direct = base.loglikelihood([LoglikelihoodRequest(icl._prefix + "Question: 2+2?\nAnswer:", " four")])[0]
    assert ll_icl.logprob == pytest.approx(ll_direct.logprob)
