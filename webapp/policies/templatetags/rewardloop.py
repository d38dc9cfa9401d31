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


@register.filter
def trim_full_stop(text):
    """``({{ run.held_back_reason|trim_full_stop }});``: a sentence (or several) set inside
    parentheses or before a semicolon, its last full stop dropped so it does not read ".);"."""
    text = str(text).rstrip()
    return text[:-1] if text.endswith(".") and not text.endswith("..") else text
