"""The movie-review snippets of the VADER research data set, read from the ``vaderSentiment==3.3.2`` sdist.

The sdist carries ``additional_resources/hutto_ICWSM_2014.tar.gz`` (Hutto & Gilbert, ICWSM 2014),
whose ``movieReviewSnippets_GroundTruth.txt`` holds 10,605 snippets (id, mean human sentiment,
text). Read here once for the demo prompts (:func:`demo_prompt_texts`, which
:func:`webapp.annotation.importers.demo_prompts_from_vader_sdist` imports) and ``bench/reward_model.py``;
needs no Django.
"""

from __future__ import annotations

import io
import random
import re
import tarfile
from pathlib import Path

from webapp.errors import ApplicationError

VADER_ARCHIVE = "hutto_ICWSM_2014.tar.gz"
VADER_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
DEMO_INSTRUCTION = "Continue this movie review in two or three sentences:\n\n{start}"


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


def demo_prompt_texts(sdist_path: str | Path, *, count: int = 400, seed: int = 0) -> list[tuple[str, str]]:
    """``(snippet id, prompt text)`` of the demo prompts: ``count`` snippets of
    :func:`movie_review_snippets`, shuffled by ``random.Random(seed)``, each cut after
    ``max(6, words // 2)`` words and put in ``DEMO_INSTRUCTION`` (the model continues a
    real review). Raises what :func:`movie_review_snippets` raises.
    """
    snippets = movie_review_snippets(sdist_path)
    random.Random(seed).shuffle(snippets)
    return [
        (snippet_id, DEMO_INSTRUCTION.format(start=" ".join(words[: max(6, len(words) // 2)])))
        for snippet_id, words in snippets[:count]
    ]
