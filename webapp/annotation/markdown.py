"""Project guidelines: Markdown rendered safely.

markdown-it-py's ``js-default`` preset (CommonMark with tables and
strikethrough, ``html=False``) escapes raw HTML in the source instead of
passing it through, and its link validator refuses ``javascript:``,
``vbscript:``, ``file:`` and non-image ``data:`` URLs. So a guideline can hold
Markdown but never markup that runs.
"""

from functools import lru_cache

from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

_markdown = MarkdownIt("js-default")


@lru_cache(maxsize=64)  # keyed by the text itself: an edited guideline is a new key
def guidelines_html(text: str) -> SafeString:
    """HTML for guidelines written in Markdown; raw HTML in ``text`` comes out as literal text.

    Rendered once per process and text (every full annotation page shows them).
    """
    return mark_safe(_markdown.render(text or ""))  # noqa: S308 - markdown-it escapes raw HTML (html=False)
