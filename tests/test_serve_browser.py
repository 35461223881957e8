"""The `retreino serve` page in a real browser: Debian's Chromium driven by Playwright.

A person picks a cat photo (and a file that is not an image) on the page; the cards must show
the label the API gives for the same photo, a bar per class, and a clear refusal, while the
page fetches nothing from anywhere but the server itself.
"""
from __future__ import annotations

import httpx
import pytest

from conftest import chromium, real_images
from test_serve import CLASSES


@pytest.fixture(scope="module")
def server(serve_server):
    return serve_server  # started once for both serve test files (see conftest)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (Playwright's sync API allows one running instance per thread)."""
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def page(browser, server):
    pg = browser.new_page(viewport={"width": 1200, "height": 900})
    pg.set_default_timeout(60_000)
    pg.requested = []
    pg.on("request", lambda req: pg.requested.append(req.url))
    pg.goto(server.url + "/")
    yield pg
    pg.close()


def test_page_shows_the_model(page):
    page.wait_for_selector("#model-classes li")
    assert page.inner_text("#model-name") == "water_bottles"
    assert page.locator("#model-classes li").all_inner_texts() == CLASSES


def test_uploading_a_cat_photo_shows_its_label_confidence_and_bars(page, server):
    cat = real_images("test", "cats", 1)[0]
    expected = httpx.post(f"{server.url}/predict", files={"files": (cat.name, cat.read_bytes(), "image/jpeg")}, timeout=60).json()
    expected = expected["predictions"][0]

    page.set_input_files("#file-input", str(cat))
    card = page.locator(".card.done").first
    card.wait_for()
    assert card.locator(".file").inner_text() == cat.name
    assert card.locator(".label").inner_text() == expected["class"]
    assert expected["class"] in CLASSES
    shown = float(card.locator(".confidence").inner_text().rstrip("%"))
    assert shown == pytest.approx(expected["confidence"] * 100, abs=0.6)
    bars = card.locator(".bar")
    assert bars.count() == len(CLASSES)
    assert bars.first.locator(".name").inner_text() == expected["class"]  # best class first
    assert card.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")  # the thumbnail shows


def test_a_file_that_is_not_an_image_gets_a_refusal_card(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture\n")
    page.set_input_files("#file-input", str(notes))
    card = page.locator(".card.failed").first
    card.wait_for()
    assert card.get_attribute("data-error") == "not_an_image"
    assert card.locator(".error").inner_text().startswith("notes.txt: not an image")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_the_page_loads_nothing_from_elsewhere(page, server):
    assert page.requested, "no requests seen"
    foreign = [u for u in page.requested if not (u.startswith(server.url) or u.startswith(("blob:", "data:")))]
    assert not foreign, foreign
    # and every asset the page named was served
    assert {f"{server.url}/static/app.js", f"{server.url}/static/style.css", f"{server.url}/model"} <= set(page.requested)



def test_show_why_toggle_displays_each_images_gradcam_overlay(page, server, tmp_path):
    """The toggle fetches POST /explain per card and swaps the photo for its overlay (a data: PNG)."""
    import os

    from conftest import ROOT

    dog = real_images("test", "dogs", 1)[0]
    page.set_input_files("#file-input", str(dog))
    card = page.locator(".card.done", has_text=dog.name).first
    card.wait_for()
    assert page.locator("#why-toggle").is_visible()
    page.check("#why")
    why = card.locator("img.why")
    why.wait_for()
    assert card.get_attribute("data-why") == "ready"
    assert why.evaluate("img => img.complete && img.naturalWidth > 0")
    assert why.get_attribute("src").startswith("data:image/png;base64,")
    assert why.is_visible() and not card.locator("img:not(.why)").is_visible()
    shot = tmp_path / "serve_why.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    if os.environ.get("RETREINO_DOCS_SHOTS"):  # refresh the picture in docs/explain.md
        card.screenshot(path=str(ROOT / "docs" / "img" / "serve_why.png"))
    page.uncheck("#why")  # off again: the photo is back
    assert not why.is_visible() and card.locator("img:not(.why)").is_visible()
    # The API behind it, as a client sees it.
    body = httpx.post(f"{server.url}/explain", files={"files": (dog.name, dog.read_bytes(), "image/jpeg")},
                      timeout=120).json()
    e = body["explanations"][0]
    assert e["class"] in CLASSES and 0.0 <= e["probability"] <= 1.0 and e["layer"] == "out_relu"
    assert httpx.get(f"{server.url}/model", timeout=30).json()["explain"] is True


# ---- the unknown answer, on a cats/dogs model with a detector --------------------------------


@pytest.fixture(scope="module")
def unknown_server(unknown_model):
    from test_serve import start_server

    server = start_server(str(unknown_model), "--quiet")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def unknown_page(browser, unknown_server):
    pg = browser.new_page(viewport={"width": 1200, "height": 900})
    pg.set_default_timeout(60_000)
    pg.goto(unknown_server.url + "/")
    pg.wait_for_selector("#model-classes li")
    yield pg
    pg.close()


def test_a_flower_shown_to_a_cats_dogs_model_is_plainly_unknown(unknown_page, unknown_server, tmp_path):
    from conftest import SHARED

    flower = sorted((SHARED / "datasets" / "flowers" / "tulips").glob("*.jpg"))[0]
    cat = real_images("test", "cats", 1)[0]
    api = {p.name: httpx.post(f"{unknown_server.url}/predict", files={"files": (p.name, p.read_bytes(), "image/jpeg")},
                              timeout=60).json()["predictions"][0] for p in (flower, cat)}
    assert api[flower.name]["unknown"] is True and api[flower.name]["would_say"] in CLASSES
    assert api[cat.name]["unknown"] is False and api[cat.name]["class"] in CLASSES

    unknown_page.set_input_files("#file-input", [str(flower), str(cat)])
    unknown_page.locator(".card.done").nth(1).wait_for()  # both answered (the page's CSP forbids eval'd waits)
    cards = {c.locator(".file").inner_text(): c for c in unknown_page.locator(".card.done").all()}
    shown = cards[flower.name]
    # Plainly: the big label says unknown (not a class), and the line under it says why and what it would say.
    assert shown.get_attribute("data-unknown") == "true"
    assert shown.locator(".label").inner_text() == "unknown"
    assert shown.locator(".label").is_visible()
    assert shown.locator(".confidence").inner_text() == (
        f"not like the training images · would say {api[flower.name]['would_say']}")
    assert "below the threshold" in shown.locator(".label").get_attribute("title")
    # The cat beside it is answered as usual.
    assert cards[cat.name].get_attribute("data-unknown") is None
    assert cards[cat.name].locator(".label").inner_text() == api[cat.name]["class"]
    unknown_page.screenshot(path=str(tmp_path / "unknown.png"), full_page=True)
    assert (tmp_path / "unknown.png").stat().st_size > 10_000
