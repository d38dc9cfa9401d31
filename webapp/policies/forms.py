"""Form helpers shared by the apps' forms over the policies models (Project's settings)."""

from django.core.validators import MaxValueValidator, MinValueValidator


def formfield_within_model_bounds(model_field, **kwargs):
    """A ModelForm ``formfield_callback``: the model field's form field, with the model's own
    MinValueValidator/MaxValueValidator as its ``min_value``/``max_value``. The number inputs then carry
    the real bounds (``min``/``max``), and a value out of range is refused with the model's bound, not a
    looser one of the field's type (a PositiveIntegerField's form field says "at least 0" where the
    model needs at least 1)."""
    lows = [v.limit_value for v in model_field.validators if isinstance(v, MinValueValidator)]
    highs = [v.limit_value for v in model_field.validators if isinstance(v, MaxValueValidator)]
    if lows:
        kwargs.setdefault("min_value", max(lows))
    if highs:
        kwargs.setdefault("max_value", min(highs))
    return model_field.formfield(**kwargs)
