"""The API's interactive docs render in a real browser under the site's CSP, from our own static files."""

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_api_docs_render_every_operation_with_no_csp_violation_and_no_outside_request(browser, live_server):
    context = browser.new_context()
    page = context.new_page()
    console, requests = [], []
    page.on("console", lambda message: console.append(message.text))
    page.on("request", lambda request: requests.append(request.url))
    response = page.goto(f"{live_server.url}/api/v1/docs")
    assert response.status == 200
    page.wait_for_selector(".opblock-summary-path", timeout=20_000)
    paths = {el.inner_text().replace("\u200b", "") for el in page.query_selector_all(".opblock-summary-path")}
    assert "/api/v1/projects/{slug}/queue/next" in paths and len(paths) >= 14
    assert not [line for line in console if "Content Security Policy" in line], console
    assert all(url.startswith(live_server.url) or url.startswith("data:") for url in requests), requests
    context.close()
