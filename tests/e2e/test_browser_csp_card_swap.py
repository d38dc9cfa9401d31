"""The card swap never trips the Content-Security-Policy (style-src 'self').

htmx "settles" attributes of elements whose id is in both the old and the new card: by default it
copies ``class``, ``style``, ``width`` and ``height`` from the old element onto the new one with
``setAttribute``. A ``style`` written that way is an inline style, which the CSP refuses
("Applying inline style violates … style-src 'self'"). The comment box gets a ``style`` attribute
whenever an annotator drags its resize handle (Chromium writes its width and height inline), so the
next submit used to log that error.
"""

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CARD = "#card[data-completion]"


def test_a_resized_comment_box_does_not_make_the_next_card_swap_violate_the_csp(
    login_page, live_server, project, annotator, make_completion
):
    for i in range(3):
        make_completion(project, text=f"completion number {i}")
    page = login_page(annotator)
    violations, console_errors = [], []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector(CARD)
    page.evaluate(
        "document.addEventListener('securitypolicyviolation', e => (window.__csp = window.__csp || []).push(e.violatedDirective))"
    )

    first = page.get_attribute(CARD, "data-completion")
    # What the resize handle does: Chromium sets the box's size as inline style (CSSOM, allowed by the CSP).
    box = page.locator("#comment").bounding_box()
    page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] - 3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] + 60, steps=5)
    page.mouse.up()
    page.evaluate("document.getElementById('comment').style.height = '120px'")  # in case the drag missed the handle
    assert page.get_attribute("#comment", "style")

    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("4")
    page.locator(f'{CARD}:not([data-completion="{first}"])').wait_for()
    page.wait_for_timeout(300)  # htmx settles 20 ms after the swap

    violations = page.evaluate("window.__csp || []")
    assert violations == []
    assert not [text for text in console_errors if "Content Security Policy" in text]
