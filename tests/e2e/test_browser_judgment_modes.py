"""The new judgment modes in a real browser (Debian chromium via Playwright), keyboard only.

The database is checked afterwards: it must hold exactly what was pressed.
Screenshots go to test-artifacts/ (copied to docs/ by `make screenshots`).
"""

import pytest

from tests.webapp.annotation_helpers import make_project, make_rank_group
from webapp.annotation.models import RankedPair, Ranking, RatingRevision

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CARD = "#card[data-completion]"


def current_item(page) -> int:
    return int(page.get_attribute(CARD, "data-completion"))


def shown_ids(page) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all(".ranked-output", "els => els.map(e => e.dataset.completionId)")]


def test_an_annotator_ranks_three_outputs_by_number_keys_takes_one_back_and_undoes(
    login_page, live_server, tiny_model_dir, models_dir, annotator, make_completion, screenshot
):
    project = make_project(tiny_model_dir, slug="rk", mode="ranking", rank_k=3)
    prompts = list(project.prompts.all())
    for i in range(3):
        make_rank_group(
            project, make_completion, prompt=prompts[i], texts=[f"output {j} of prompt {i}: {'words ' * (4 + 9 * j)}" for j in range(3)]
        )
    page = login_page(annotator)
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector(CARD)
    page.evaluate("window.__marker = 'same page'")

    expected = {}
    # First card: 2 then 3; the last output places itself; Enter submits.
    anchor, shown = current_item(page), shown_ids(page)
    page.keyboard.press("2")
    page.keyboard.press("3")
    assert page.locator("#rank-summary").inner_text().startswith("Best to worst: 2 › 3 › 1")
    screenshot(page, "annotate-ranking")
    expected[anchor] = [shown[1], shown[2], shown[0]]
    page.keyboard.press("Enter")
    page.locator(f'{CARD}:not([data-completion="{anchor}"])').wait_for()

    # Second card: 1, take it back with Backspace, then 3, 1 (2 places itself).
    anchor, shown = current_item(page), shown_ids(page)
    page.keyboard.press("1")
    page.keyboard.press("Backspace")
    assert page.locator("select.rank-place").evaluate_all("els => els.filter(e => e.value).length") == 0
    page.keyboard.press("3")
    page.keyboard.press("1")
    expected[anchor] = [shown[2], shown[0], shown[1]]
    page.keyboard.press("Enter")
    page.locator(f'{CARD}:not([data-completion="{anchor}"])').wait_for()
    assert page.locator("#count-today").inner_text() == "2"

    # Undo the second ranking: the same group comes back to be ranked again.
    page.keyboard.press("u")
    page.locator(f'{CARD}[data-completion="{anchor}"]').wait_for()
    flash = page.locator("#card .flash").inner_text()
    assert "Undone: you had ranked " in flash and "places are filled in again" in flash, flash
    assert page.evaluate("window.__marker") == "same page"

    stored = {r.group.anchor_id: r.order for r in Ranking.objects.select_related("group")}
    first_anchor = next(iter(expected))
    assert stored == {first_anchor: expected[first_anchor]}
    assert list(RatingRevision.objects.values_list("order", flat=True)) == [expected[anchor]]
    assert RankedPair.objects.count() == 3


def test_an_annotator_scores_a_rubric_by_keyboard_goes_back_one_criterion_and_undoes(
    login_page, live_server, tiny_model_dir, models_dir, annotator, make_completion, screenshot
):
    from webapp.annotation.models import Rating

    rubric = [
        {"name": "helpful", "weight": 2, "description": "does what the prompt asks"},
        {"name": "fluent", "weight": 1, "description": "reads well"},
        {"name": "on topic", "weight": 1},
    ]
    project = make_project(tiny_model_dir, slug="rb", mode="rubric", rubric=rubric)
    for i in range(3):
        make_completion(project, text=f"completion {i}: {'a sentence that goes on ' * (2 + 5 * i)}")
    page = login_page(annotator)
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector(CARD)

    first = current_item(page)
    for key in ("4", "1", "Backspace", "2", "5"):  # helpful 4, fluent 1 taken back, fluent 2, on topic 5
        page.keyboard.press(key)
    assert page.locator(".criterion.current").count() == 0  # every criterion scored
    screenshot(page, "annotate-rubric")
    page.keyboard.press("Enter")
    page.locator(f'{CARD}:not([data-completion="{first}"])').wait_for()

    second = current_item(page)
    page.keyboard.press("Enter")  # nothing scored: a clear error, the card stays, nothing stored
    page.locator("#card .flash.error").wait_for()
    assert "helpful is missing" in page.locator("#card .flash.error").inner_text() and current_item(page) == second
    for key in ("3", "3", "3", "Enter"):
        page.keyboard.press(key)
    page.locator(f'{CARD}:not([data-completion="{second}"])').wait_for()

    page.keyboard.press("u")
    page.locator(f'{CARD}[data-completion="{second}"]').wait_for()
    assert "helpful 3, fluent 3, on topic 3" in page.locator("#card .flash").inner_text()
    # The undone scores are filled in again, so Enter alone would give them back.
    assert page.eval_on_selector_all(".criterion input:checked", "els => els.map(e => e.value)") == ["3", "3", "3"]

    stored = {r.completion_id: [c["score"] for c in r.criteria] for r in Rating.objects.all()}
    assert stored == {first: [4, 2, 5]}
    assert list(RatingRevision.objects.values_list("criteria", flat=True))[0][0] == {"name": "helpful", "weight": 2.0, "score": 3}

    # The project switches to Likert: the history keeps the rubric judgment beside the new one.
    from webapp.annotation.models import Lease
    from webapp.policies.models import Project

    rubric_lease = Lease.objects.get(annotator=annotator, fulfilled=False)  # the undone item, leased back
    assert (rubric_lease.completion_id, rubric_lease.rating_mode) == (second, "rubric")
    Project.objects.filter(pk=project.pk).update(rating_mode="likert")
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector(CARD)
    item = current_item(page)
    # The rubric lease is given back, not shown as a Likert item: the card holds a lease taken in Likert.
    assert page.locator('#card input[name="mode"]').get_attribute("value") == "likert"
    assert list(Lease.objects.filter(annotator=annotator, fulfilled=False).values_list("completion_id", "rating_mode")) == [
        (item, "likert")
    ]
    assert not Lease.objects.filter(pk=rubric_lease.pk).exists()
    page.keyboard.press("4")
    page.locator(f'{CARD}:not([data-completion="{item}"])').wait_for()
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/history/")
    # Newest first: the Likert rating, the rubric judgment that was undone (listed, marked), the first one.
    assert page.locator("#history td.mode").all_inner_texts() == ["Likert 1–5"] + ["Rubric: named criteria 1–5"] * 2
    assert page.locator("#history tr.undone").count() == 1
    assert "undone" in page.locator("#history tr.undone").inner_text()
    assert "helpful: 4" in page.locator("#history").inner_text()


def test_an_annotator_gives_thumbs_by_keyboard_and_undoes_one(
    login_page, live_server, tiny_model_dir, models_dir, annotator, make_completion, screenshot
):
    from webapp.annotation.models import Rating

    project = make_project(tiny_model_dir, slug="th", mode="thumbs")
    for i in range(4):
        make_completion(project, text=f"completion {i}: {'a sentence that goes on ' * (2 + 5 * i)}")
    page = login_page(annotator)
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector(CARD)
    assert "down · " in page.locator("#card").inner_text()  # the keys are on the card
    screenshot(page, "annotate-thumbs")

    given = {}
    for key in ("2", "1", "1"):  # up, down, down
        item = current_item(page)
        given[item] = key == "2"
        page.keyboard.press(key)
        page.locator(f'{CARD}:not([data-completion="{item}"])').wait_for()
    page.keyboard.press("u")
    page.locator(f'{CARD}[data-completion="{item}"]').wait_for()
    assert "you had chosen thumbs down" in page.locator("#card .flash").inner_text()
    page.keyboard.press("2")  # changed to up
    page.locator(f'{CARD}:not([data-completion="{item}"])').wait_for()
    given[item] = True

    assert dict(Rating.objects.values_list("completion_id", "thumbs_up")) == given
    assert list(RatingRevision.objects.values_list("completion_id", "thumbs_up")) == [(item, False)]
    assert set(Rating.objects.values_list("score", flat=True)) == {None}
