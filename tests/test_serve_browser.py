"""`serve`'s page in a real browser: Debian's chromium driven by Selenium through Debian's chromedriver
(no driver download). Type a title, choose an image file, submit, read the decision from the DOM (it
must be offline `predict`'s), and check the screenshot is not blank.

Skips, saying how to install them, when chromium or chromedriver is missing, unless
MMCACHE_REQUIRE_BROWSER=1 (CI), where a missing browser fails."""

import os
import shutil
import threading
import time
from dataclasses import replace

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
from serve_fixtures import build_served_run  # noqa: E402

from pipeline import Classifier  # noqa: E402
from pipeline.serve.app import create_app  # noqa: E402
from pipeline.serve.cli import bind  # noqa: E402
from pipeline.serve.config import ServeConfig  # noqa: E402

pytestmark = pytest.mark.slow
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver; pip install selenium"
DRIVER = "/usr/bin/chromedriver"


def browser_or_skip():
    """selenium's webdriver, once chromium, chromedriver and selenium are all there."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = [name for name, found in (("chromium", chromium), ("chromedriver", os.path.exists(DRIVER))) if not found]
    try:
        from selenium import webdriver
    except ModuleNotFoundError:
        missing.append("selenium")
    if missing:
        message = f"{', '.join(missing)} missing: the serve page is checked in a real browser; install: {INSTALL}"
        if os.environ.get("MMCACHE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return webdriver, chromium


@pytest.fixture(scope="module")
def page_server(tmp_path_factory, tiny_bert, tiny_clip):
    """The app on a free loopback port, served by uvicorn in a thread of this process."""
    import uvicorn

    served = build_served_run(tmp_path_factory.mktemp("serve-browser"), tiny_bert, tiny_clip)
    classifier = Classifier.from_run(served["run"], device="cpu")
    config = replace(ServeConfig(run=str(served["run"]), device="cpu"), max_body_mb=0.5)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(classifier, config), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield {**served, "url": f"http://127.0.0.1:{sock.getsockname()[1]}/"}
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def browser(tmp_path):
    webdriver, chromium = browser_or_skip()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=900,900",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def submitted(driver, title, image_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "title").send_keys(title)
    if image_path is not None:
        driver.find_element(By.ID, "image").send_keys(str(image_path))
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "preview").is_displayed())
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.ID, "error").text or d.find_element(By.ID, "decision").text not in ("", "..."))
    return driver


def test_the_page_classifies_a_post_as_offline_predict_does(page_server, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    post = next(p for p in page_server["posts"] if p["id"] == "te0003")
    expected = page_server["expected"].loc["te0003"]
    browser.get(page_server["url"])
    submitted(browser, post["title"], page_server["data"] / "images" / "te0003.jpg")
    decision = browser.find_element(By.ID, "decision")
    assert decision.get_attribute("data-pred") == expected["pred_name"]
    assert decision.text == f"{expected['pred_name']} (ok)"
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert [bar.find_element(By.CSS_SELECTOR, "span").text for bar in bars] == ["fake", "real"]
    assert bars[1].text.endswith(f"{100 * expected['prob_real']:.1f}%")
    assert browser.find_element(By.ID, "error").text == ""
    shot = tmp_path / "serve-page.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("MMCACHE_SCREENSHOT_DIR"):  # to look at it by eye
        shutil.copy(shot, os.environ["MMCACHE_SCREENSHOT_DIR"])
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, the preview and the bars: not a blank page


def test_the_page_shows_a_refused_upload_as_an_error(page_server, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    big = tmp_path / "big.png"
    Image.effect_noise((600, 600), 80).convert("RGB").save(big)  # over the server's 0.5 MB body limit
    browser.get(page_server["url"])
    submitted(browser, "a photo of a cat", big)
    assert browser.find_element(By.ID, "error").text.startswith("413: request body over 0.5 MB")
    assert browser.find_element(By.ID, "decision").text == "" and not browser.find_elements(By.CSS_SELECTOR, ".bar")
