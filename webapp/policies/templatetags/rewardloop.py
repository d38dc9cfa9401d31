"""Template helpers available in every template (registered as a builtin)."""

from django import template

register = template.Library()


@register.filter
def get_item(mapping, key):
    """``{{ run.metrics|get_item:"objective/kl" }}``: dict lookup for keys with slashes; '' if missing."""
    if not isinstance(mapping, dict):
        return ""
    value = mapping.get(key)
    return "" if value is None else value
