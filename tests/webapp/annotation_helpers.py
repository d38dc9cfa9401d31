"""Helpers shared by the annotation tests (not fixtures: plain functions)."""

from webapp.annotation.importers import PromptRow
from webapp.annotation.services import pair_create, prompts_create
from webapp.policies.services import project_create


def make_project(tiny_model_dir, *, slug: str, mode: str, n_prompts: int = 6, **fields):
    project = project_create(
        slug=slug,
        title=f"{mode} project",
        base_model_path=tiny_model_dir,
        rating_mode=mode,
        pool_target=fields.pop("pool_target", 4),
        min_new_ratings=fields.pop("min_new_ratings", 2),
        max_new_tokens=fields.pop("max_new_tokens", 8),
        pg_config=fields.pop("pg_config", {"epochs": 1, "minibatch_size": 4, "lr": 1e-3, "lora_r": 4, "lora_alpha": 8}),
        **fields,
    )
    prompts_create(
        project=project,
        rows=[PromptRow(line=i + 1, text=f"Write about topic {i}:") for i in range(n_prompts)],
    )
    return project


def make_pair(project, make_completion, *, prompt=None, texts=("left-ish text", "right-ish text")):
    prompt = prompt or project.prompts.filter(held_out=False).order_by("id").first()
    a = make_completion(project, prompt=prompt, text=texts[0])
    b = make_completion(project, prompt=prompt, text=texts[1])
    return pair_create(completion_a=a, completion_b=b)


def make_rank_group(project, make_completion, *, prompt=None, k=None, texts=None):
    """A rank group of ``k`` (default: the project's ``rank_k``) completions of one prompt; the first anchors it."""
    from webapp.annotation.services import rank_group_create

    k = k or project.rank_k
    texts = texts or [f"output {i} of {k}" for i in range(k)]
    prompt = prompt or project.prompts.filter(held_out=False).order_by("id").first()
    return rank_group_create(completions=[make_completion(project, prompt=prompt, text=t) for t in texts])


def production_answer(project, token, response_id, *, n=1):
    """A production answer of ``n`` choices to ``token``'s request ``response_id``, as ``/v1/chat/completions``
    stores it (served version, one short prompt)."""
    from webapp.annotation.production import AnswerChoice, production_answer_store

    return production_answer_store(
        project=project, version_number=project.served_version.number, api_token=token, response_id=response_id,
        prompt_text="What is a good film?", prompt_token_ids=[5, 6, 7],
        choices=[AnswerChoice(index=i, text=f"answer {i}", token_ids=[11, 12], logprobs=[-1.0, -1.0], finished=True)
                 for i in range(n)],
    )
