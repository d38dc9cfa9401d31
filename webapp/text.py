"""Text that every database can store.

PostgreSQL's ``text`` and ``jsonb`` types reject U+0000 (NUL); SQLite stores it.
A model can emit NUL (byte-level tokenizers have a token for byte 0) and a
browser can post it, so text from either passes through here before it is saved.
"""

NUL = "\x00"
REPLACEMENT_CHARACTER = "\ufffd"


def storable_text(text: str) -> str:
    """``text`` with each NUL replaced by U+FFFD, the character Unicode reserves for unrepresentable input.

    For display text of model output: the stored token ids stay the truth, so
    nothing is lost; the replacement shows the reader that something was there.
    """
    return text.replace(NUL, REPLACEMENT_CHARACTER)


def without_nul(text: str) -> str:
    """``text`` with every NUL removed (for what people type: a NUL there is never meant)."""
    return text.replace(NUL, "")
