"""Exports that the rest of the ecosystem reads: HF model folders and TRL-ready JSONL."""

import json

import pytest
import torch
from django.core.management import CommandError, call_command

from webapp.annotation import services as annotation_services
from webapp.annotation.models import Choice, Comparison, Completion, Pair, Rating
from webapp.policies.models import AuditEvent
from webapp.training import services as training_services


@pytest.fixture
def trained_version(project, make_user):
    """v1: a LoRA version trained on the tiny model."""
    annotation_services.completion_pool_refill(project=project, seed=11)
    user = make_user("rater")
    for completion in Completion.objects.filter(project=project):
        Rating.objects.create(completion=completion, annotator=user, score=5 if completion.pk % 2 else 1)
    project.pg_config = {**project.pg_config, "lr": 5e-2}  # a visible change of the weights
    project.save(update_fields=["pg_config"])
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    assert run.status == "succeeded", run.error
    return run.result_version


def test_an_exported_lora_version_loads_with_from_pretrained_and_matches_the_adapter(trained_version, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from webapp.policies.runtime import policy_load

    out = tmp_path / "export"
    call_command("export_version", trained_version.project.slug, str(trained_version.number), str(out))

    assert not (out / "adapter_config.json").exists()  # merged: plain transformers, no peft
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Continue this review: film", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > ids["input_ids"].shape[1]
    # Same function as the served adapter, not merely the base model.
    adapter = policy_load(trained_version).model
    base = AutoModelForCausalLM.from_pretrained(trained_version.project.base_model_path)
    with torch.no_grad():
        merged_logits = model(**ids).logits
        torch.testing.assert_close(merged_logits, adapter(**ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(merged_logits, base(**ids).logits, atol=1e-4)
    assert AuditEvent.objects.filter(action="export_version", target="v1").exists()


def test_export_version_refuses_an_existing_folder_and_an_unknown_version(trained_version, tmp_path):
    slug = trained_version.project.slug
    (tmp_path / "taken").mkdir()
    with pytest.raises(CommandError, match="exists already"):
        call_command("export_version", slug, "1", str(tmp_path / "taken"))
    with pytest.raises(CommandError, match="no version 9"):
        call_command("export_version", slug, "9", str(tmp_path / "new"))


@pytest.fixture
def judged(project, make_user, make_completion):
    """Likert ratings of three completions of one prompt, a thumbs-free neutral 3, and one pairwise choice."""
    prompt = project.prompts.filter(held_out=False).order_by("id").first()
    good = make_completion(project, text="a warm, vivid review", prompt=prompt)
    bad = make_completion(project, text="asdf asdf", prompt=prompt)
    neutral = make_completion(project, text="it was a film", prompt=prompt)
    ann1, ann2 = make_user("r1"), make_user("r2")
    Rating.objects.create(completion=good, annotator=ann1, score=5)
    Rating.objects.create(completion=good, annotator=ann2, score=4)
    Rating.objects.create(completion=bad, annotator=ann1, score=1)
    Rating.objects.create(completion=neutral, annotator=ann1, score=3)
    other = project.prompts.filter(held_out=False).order_by("id")[1]
    a = make_completion(project, text="pair side A", prompt=other)
    b = make_completion(project, text="pair side B", prompt=other)
    pair = Pair.objects.create(project=project, completion_a=a, completion_b=b)
    Comparison.objects.create(pair=pair, annotator=ann1, choice=Choice.B, a_on_left=True)
    Comparison.objects.create(pair=pair, annotator=ann2, choice=Choice.TIE, a_on_left=False)
    return {"prompt": prompt.text, "other": other.text}


def test_kto_export_loads_with_datasets_and_labels_each_judgment(project, judged, tmp_path):
    import datasets

    out = tmp_path / "kto.jsonl"
    call_command("export_ratings", project.slug, "--format", "kto", str(out))
    data = datasets.load_dataset("json", data_files=str(out), split="train")

    assert data.column_names == ["prompt", "completion", "label"]
    rows = {(r["completion"], r["label"]) for r in data}
    assert rows == {
        ("a warm, vivid review", True),  # 5
        ("a warm, vivid review", True),  # 4 (a set: one entry)
        ("asdf asdf", False),  # 1
        ("pair side B", True),  # the pairwise winner
        ("pair side A", False),  # its loser
    }
    assert len(data) == 5  # the neutral 3 and the tie give no row
    for r in data:
        assert r["prompt"] == (judged["other"] if r["completion"].startswith("pair") else judged["prompt"])
    assert AuditEvent.objects.filter(action="export_ratings", detail__rows=5).exists()


def test_pairs_export_loads_with_datasets_and_puts_the_better_completion_first(project, judged, tmp_path):
    import datasets

    out = tmp_path / "pairs.jsonl"
    call_command("export_ratings", project.slug, str(out), "--format=pairs")
    data = datasets.load_dataset("json", data_files=str(out), split="train")

    assert data.column_names == ["prompt", "chosen", "rejected"]
    pairs = {(r["prompt"], r["chosen"], r["rejected"]) for r in data}
    assert pairs == {
        (judged["other"], "pair side B", "pair side A"),  # explicit choice
        (judged["prompt"], "a warm, vivid review", "asdf asdf"),  # 4.5 vs 1
        (judged["prompt"], "a warm, vivid review", "it was a film"),  # 4.5 vs 3
        (judged["prompt"], "it was a film", "asdf asdf"),  # 3 vs 1
    }
    assert len(data) == 4
    for line in out.read_text().splitlines():
        assert set(json.loads(line)) == {"prompt", "chosen", "rejected"}


def test_export_ratings_refuses_an_unknown_project(db, tmp_path):
    with pytest.raises(CommandError, match="No project"):
        call_command("export_ratings", "nope", str(tmp_path / "x.jsonl"), "--format", "kto")


@pytest.mark.parametrize("fmt", ["kto", "pairs"])
def test_export_ratings_refuses_to_write_an_empty_file(project, fmt, tmp_path):
    out = tmp_path / "empty.jsonl"
    with pytest.raises(CommandError, match="Nothing to export yet"):
        call_command("export_ratings", project.slug, str(out), "--format", fmt)

    assert not out.exists()
    assert not AuditEvent.objects.filter(action="export_ratings").exists()
