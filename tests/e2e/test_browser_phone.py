"""Phone-sized screens: one scrolling page, no box scrolling inside it, nothing sticking out sideways."""

import pytest

from webapp.annotation.models import Prompt
from webapp.policies.models import ModelVersion
from webapp.training.models import VersionSample

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG = " ".join(["The pacing drags in the middle, but the last act earns every tear it asks for."] * 25)

# Every element that scrolls by itself (overflow auto/scroll with more content than room), by tag#id.class.
NESTED_SCROLLERS = """() => Array.from(document.querySelectorAll("main *, header *")).filter(el => {
  const style = getComputedStyle(el);
  const scrollsY = ["auto", "scroll"].includes(style.overflowY) && el.scrollHeight > el.clientHeight + 1;
  return scrollsY && el.offsetParent !== null;
}).map(el => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + (el.className ? "." + el.className : ""))"""


def phone_checks(page, width):
    assert page.evaluate(NESTED_SCROLLERS) == []
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing sticks out sideways


@pytest.mark.parametrize("width", [320, 390])
def test_long_texts_grow_the_page_on_a_phone_instead_of_scrolling_in_a_box(
    login_page, live_server, project, annotator, staff_user, make_completion, screenshot, width
):
    prompt = project.prompts.filter(held_out=False).first()
    prompt.text = "Continue this review: " + LONG[:600]
    prompt.save(update_fields=["text"])
    make_completion(project, prompt=prompt, text=LONG)

    page = login_page(annotator, width=width, height=740)
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector("#card[data-completion]")
    phone_checks(page, width)
    completion = page.locator("#card .completion")
    assert completion.evaluate("el => el.scrollHeight <= el.clientHeight + 1")  # shown whole
    assert page.evaluate("document.documentElement.scrollHeight") > 740  # the page scrolls instead
    if width == 320:
        screenshot(page, "annotate-phone-320")

    # The staff side too: the arena and the compare page, with long answers.
    held_out = Prompt.objects.get(project=project, held_out=True)
    v0 = project.served_version
    v1 = ModelVersion.objects.create(project=project, number=1, parent=v0, kind="lora", weights_path="/nowhere")
    for version, text in ((v0, LONG), (v1, LONG.replace("drags", "sags"))):
        VersionSample.objects.create(version=version, prompt=held_out, text=text, token_ids=[1], logprobs=[-1.0],
                                     ref_logprobs=[-1.0], finished=True)
    staff = login_page(staff_user, width=width, height=740)
    staff.goto(f"{live_server.url}/p/{project.slug}/arena/")
    staff.wait_for_selector("#card[data-vote]")
    phone_checks(staff, width)
    staff.goto(f"{live_server.url}/staff/p/{project.slug}/compare/?a=0&b=1")
    staff.wait_for_selector("#compare")
    phone_checks(staff, width)
    if width == 320:
        screenshot(staff, "compare-phone-320")
