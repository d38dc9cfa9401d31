"""Version tasks (queue ``training``: they load a model). Thin: take ids, call a service."""

from celery import shared_task

from . import services


@shared_task(acks_late=True)
def version_export_build(export_id: int) -> str:
    """Build a requested download of a version (:func:`services.version_export_build`). Safe to deliver twice."""
    export = services.version_export_build(export_id=export_id)
    return export.status if export else "missing"


@shared_task(acks_late=True)
def plot_draw(kind: str, data: dict, slot: str = "") -> str:
    """Draw one plot's file (:func:`plotfiles.plot_draw`); sent to queue ``generation``. Safe to deliver twice."""
    from . import plotfiles

    return plotfiles.plot_draw(kind=kind, data=data, slot=slot)
