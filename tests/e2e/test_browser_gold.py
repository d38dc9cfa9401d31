"""Gold items in a real browser (Debian chromium via Playwright): staff add one on the figures
page, an annotator rates it by keyboard without being told it is gold, staff see their accuracy,
then change the answer and see the accuracy and training weight follow (and the audit log say so).

Screenshot: test-artifacts/figures-gold.png (copied to docs/ by `make screenshots`).
"""

import pytest

from webapp.annotation.models import GoldItem, Rating
from webapp.policies.models import AuditEvent

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CARD = "#card[data-completion]"


def test_an_annotator_rates_a_gold_item_blind_and_staff_see_and_rescore_their_accuracy(
    login_page, live_server, project, annotator, staff_user, make_completion, screenshot
):
    project.gold_rate = 1.0  # a gold item on every card while one is left: deterministic
    project.gold_min_answers = 1
    project.save()
    gold = make_completion(project, text="The capital of France is Paris.")
    ordinary = make_completion(project, text="an ordinary completion")

    staff = login_page(staff_user)
    staff.goto(f"{live_server.url}/p/{project.slug}/figures/")
    staff.fill("#gold-form input[name=completion]", str(gold.pk))
    staff.select_option("#gold-form select[name=score]", "4")
    staff.fill("#gold-form input[name=note]", "correct and complete")
    staff.click("#gold-form button[type=submit]")
    staff.locator(f'#gold-items tr[data-gold="{gold.pk}"]').wait_for()
    assert GoldItem.objects.get().answer == {"score": 4, "tolerance": 0}

    page = login_page(annotator)
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector(CARD)
    assert int(page.get_attribute(CARD, "data-completion")) == gold.pk
    assert "gold" not in page.content().lower()  # nothing on the page (text, attributes, scripts) says so
    page.keyboard.press("4")
    page.locator(f'{CARD}[data-completion="{ordinary.pk}"]').wait_for()
    assert "gold" not in page.content().lower()
    assert list(Rating.objects.filter(completion=gold).values_list("annotator__username", "score")) == [("ann", 4)]

    staff.goto(f"{live_server.url}/p/{project.slug}/figures/")
    row = staff.locator("#annotators tr", has_text="ann")
    assert row.locator("td").nth(6).inner_text() == "1 / 1"
    assert row.locator("td").nth(7).inner_text() == "100%"
    assert row.locator("td").nth(8).inner_text() == "1.00"
    screenshot(staff, "figures-gold")

    staff.click(f'#gold-items tr[data-gold="{gold.pk}"] a')  # Edit: the form comes prefilled
    assert staff.input_value("#gold-form select[name=score]") == "4"
    staff.select_option("#gold-form select[name=score]", "2")
    staff.click("#gold-form button[type=submit]")
    staff.locator(".flash.success").wait_for()
    row = staff.locator("#annotators tr", has_text="ann")
    assert row.locator("td").nth(6).inner_text() == "0 / 1"
    assert row.locator("td").nth(7).inner_text() == "0%"
    assert float(row.locator("td").nth(8).inner_text()) == pytest.approx(project.gold_low_weight, abs=0.005)
    assert staff.locator(f'#gold-items tr[data-gold="{gold.pk}"] .gold-answer').inner_text() == "2"
    event = AuditEvent.objects.filter(action="gold_set").first()
    assert event.detail["verdicts_changed"] == 1 and event.detail["before"] == {"score": 4, "tolerance": 0}
