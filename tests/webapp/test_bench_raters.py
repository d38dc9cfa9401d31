"""bench/raters.py: the built-in raters of the learning benchmark and loading one from a spec."""

import random
import sys

import pytest

from bench.raters import BUILTIN, RaterError, concise, critical, load_rater, vader
from bench.simulated_annotators import SimulatedAnnotator


def test_each_built_in_loads_by_name_and_scores_within_the_likert_range():
    for name in BUILTIN:
        rater = load_rater(name)
        for text in ("", "Awful. I hated every minute of it.", "A warm, wonderful, joyful film!", "word " * 200):
            assert 1.0 <= rater("A film", text) <= 5.0


def test_critical_is_the_mirror_of_vader():
    for text in ("Awful. I hated it.", "A wonderful, joyful film!", "It is a film."):
        assert critical("p", text) == 6 - vader("p", text)
    assert critical("p", "Awful. I hated it.") >= 4 and vader("p", "Awful. I hated it.") <= 2


def test_concise_rewards_short_finished_replies_and_costs_a_point_per_eight_words():
    assert concise("p", "The acting is good and the story is moving.") == 5.0
    assert concise("p", "The acting is good and the story is moving") == 4.0  # not finished
    assert concise("p", " ".join(["word"] * 28) + ".") == 3.0  # 16 words over: two points
    assert concise("p", "Yes.") == 2.0  # under three words
    assert concise("p", "word " * 300) == 1.0  # clipped
    assert concise("p", 'He said "it is fine."') == 5.0  # a closing quote after the full stop


def test_a_package_module_callable_spec_loads_a_rater_the_bench_has_never_seen(tmp_path, monkeypatch):
    (tmp_path / "my_taste.py").write_text(
        "def likes_dogs(prompt, completion):\n    return 5.0 if 'dog' in completion else 1.5\n"
        "class Judge:\n    @staticmethod\n    def score(prompt, completion):\n        return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rater = load_rater("my_taste:likes_dogs")
    assert rater.spec == "my_taste:likes_dogs"
    assert rater("p", "a dog") == 5.0 and rater("p", "a cat") == 1.5
    assert load_rater("my_taste:Judge.score")("p", "x") == 3.0
    sys.modules.pop("my_taste", None)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("vaderish", "expected package.module:callable or a built-in name"),
        ("bench.raters:", "expected package.module:callable"),
        ("no_such_module_here:rate", "cannot import module 'no_such_module_here'"),
        ("bench.raters:nope", "has no attribute 'nope'"),
        ("bench.raters:CONCISE_WORDS", "is a int, not a callable"),
    ],
)
def test_a_bad_spec_is_a_clear_error(spec, message):
    with pytest.raises(RaterError, match=message):
        load_rater(spec)


def test_a_rater_that_leaves_the_scale_or_fails_is_refused_when_loaded(tmp_path, monkeypatch):
    (tmp_path / "bad_taste.py").write_text(
        "def too_high(prompt, completion):\n    return 7.0\n"
        "def nan(prompt, completion):\n    return float('nan')\n"
        "def text(prompt, completion):\n    return 'five'\n"
        "def broken(prompt, completion):\n    raise KeyError('x')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RaterError, match=r"returned 7.0 .*a Likert score is in \[1, 5\]"):
        load_rater("bad_taste:too_high")
    with pytest.raises(RaterError, match="returned nan"):
        load_rater("bad_taste:nan")
    with pytest.raises(RaterError, match="returned 'five'"):
        load_rater("bad_taste:text")
    with pytest.raises(RaterError, match="bad_taste:broken failed on completion .*KeyError"):
        load_rater("bad_taste:broken")
    sys.modules.pop("bad_taste", None)


def test_annotators_round_a_fractional_ideal_half_up_before_bias_and_noise():
    exact = SimulatedAnnotator("x")
    rng = random.Random(0)
    assert [exact.rate_ideal(v, rng) for v in (1.0, 2.49, 2.5, 4.5, 5.0)] == [1, 2, 3, 5, 5]
    assert SimulatedAnnotator("y", bias=+1).rate_ideal(4.5, rng) == 5  # clipped
