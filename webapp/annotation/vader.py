"""The movie-review snippets of the VADER research data set, read from the ``vaderSentiment==3.3.2`` sdist.

The sdist carries ``additional_resources/hutto_ICWSM_2014.tar.gz`` (Hutto & Gilbert, ICWSM 2014),
whose ``movieReviewSnippets_GroundTruth.txt`` holds 10,605 snippets (id, mean human sentiment,
text). Read here once for the demo prompts (:func:`webapp.annotation.importers.demo_prompts_from_vader_sdist`)
and ``bench/reward_model.py``; needs no Django.
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

from webapp.errors import ApplicationError

VADER_ARCHIVE = "hutto_ICWSM_2014.tar.gz"
VADER_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def movie_review_snippets(sdist_path: str | Path, *, min_words: int = 12, max_words: int = 60) -> list[tuple[str, list[str]]]:
    """``(snippet id, words)`` of every snippet of ``min_words`` to ``max_words`` words, in the file's order.

    A snippet's whitespace is collapsed to single spaces and its ``''`` quotes become ``"``.

    Raises:
        ApplicationError: the sdist does not contain the data set's archive.
        OSError / tarfile.TarError: ``sdist_path`` cannot be read as a tar file.
    """
    sdist_path = Path(sdist_path)
    with tarfile.open(sdist_path) as sdist:
        inner_name = next((n for n in sdist.getnames() if n.endswith(VADER_ARCHIVE)), None)
        if inner_name is None:
            raise ApplicationError(f"{sdist_path.name} does not contain {VADER_ARCHIVE}")
        inner = io.BytesIO(sdist.extractfile(inner_name).read())
    with tarfile.open(fileobj=inner) as data:
        text = data.extractfile(VADER_MEMBER).read().decode("utf-8")
    snippets = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        snippet_id, _sentiment, snippet = parts
        words = re.sub(r"\s+", " ", snippet.replace("''", '"')).strip().split(" ")
        if min_words <= len(words) <= max_words:
            snippets.append((snippet_id, words))
    return snippets
