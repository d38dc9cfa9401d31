"""bench/reward_model.py --rater: the reward model measured on the policy's own completions."""

import torch

from bench.reward_model import annotator_labels, main, within_group_accuracy


def test_within_group_accuracy_counts_only_pairs_of_one_prompt_that_differ_in_score():
    group = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    target = torch.tensor([1.0, 3.0, 2.0, 4.0, 4.0, 5.0, 1.0])
    # Prompt 0: pairs (0,1), (0,2), (1,2), ordered right, right, wrong; prompt 1: a tie in target (not
    # counted); prompt 2: tied in pred (half). Cross-prompt pairs, however wrong, are not counted.
    pred = torch.tensor([0.0, 2.0, 3.0, -9.0, 9.0, 1.0, 1.0])
    assert within_group_accuracy(pred, target, group) == (1 + 1 + 0 + 0.5) / 4
    assert within_group_accuracy(pred, torch.ones(7), group) is None


def test_annotator_labels_follow_the_score_and_cancel_the_annotators_bias():
    scores = [float(s) for s in range(1, 6)] * 80  # item i rated by annotator i % 4
    labels = annotator_labels(scores, seed=3)
    assert labels.shape == (400,)
    assert torch.equal(labels, annotator_labels(scores, seed=3))  # seeded
    by_score = [float(labels[[i for i, s in enumerate(scores) if s == v]].mean()) for v in range(1, 6)]
    assert by_score == sorted(by_score) and by_score[-1] - by_score[0] > 1.0
    # The lenient (+1) and harsh (-1) annotators see the same scores; normalised, their means agree.
    lenient, harsh = labels[0::4].mean(), labels[1::4].mean()
    assert abs(float(lenient - harsh)) < 0.1


def test_rater_mode_samples_own_completions_holds_out_whole_prompts_and_reuses_its_cache(fake_vader_sdist, tmp_path):
    args = ["--tiny", "--rater", "concise", "--sdist", str(fake_vader_sdist), "--cache", str(tmp_path / "cache"),
            "--threads", "1", "--repeats", "1", "--per-prompt", "3", "--max-new-tokens", "6",
            "--variants", "ridge_multi,rm_linear_multi_pca256", "--timing-variant", "none"]
    result = main(args)
    assert result["test_size"] == 42  # --tiny's 40 rounded up to whole prompts of 3
    assert "rater concise" in result["rater"] and "annotators labels" in result["rater"]
    assert result["feature_extraction"]["completions"] % 3 == 0
    for variant in ("ridge_multi", "rm_linear_multi_pca256"):
        for n in ("16", "32"):
            row = result["variants"][variant][n]
            assert set(row) >= {"pearson", "spearman", "pairwise_accuracy", "within_prompt_accuracy"}
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith("own-completions-"))
    assert len(cached) == 1
    again = main(args)  # the same completions and features from the cache, the same numbers

    def metrics(r):
        return {v: {n: {k: x for k, x in row.items() if k != "fit_seconds"} for n, row in rows.items()}
                for v, rows in r["variants"].items()}

    assert metrics(again) == metrics(result)
