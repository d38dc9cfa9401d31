"""Rewards' receivers of lower layers' signals."""

import logging

log = logging.getLogger(__name__)


def score_on_completions_stored(sender, *, project_id: int, completion_ids: list[int], **kwargs) -> int:
    """Score new pool completions with the project's latest reward model (``annotation.completions_stored``).

    Fails soft: no reward model yet, or one that cannot be loaded or scored, leaves
    ``rm_score``/``rm_uncertainty`` empty and logs why; the pool refill never fails for it.
    Returns how many completions were scored.
    """
    from webapp.policies.models import Project

    from . import selectors, services

    project = Project.objects.filter(pk=project_id).first()
    if project is None or selectors.reward_model_latest(project=project) is None:
        return 0
    try:
        return services.completions_score(project=project, completion_ids=completion_ids)
    except Exception as exc:  # noqa: BLE001 - scoring is an extra; a bad model must not stop the pool
        log.warning("project %s: new completions left unscored: %s", project.slug, exc)
        return 0
