"""The browser page of ``vidq serve`` in a real headless Chromium (selenium + Debian's chromedriver): pick a video the
server may read, ask, watch the answer stream and the report appear; the answer is the API's own, token for token."""

from __future__ import annotations

import base64
import shutil
import struct
import zlib
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from flashvid_cli.config import AskConfig  # noqa: E402
from flashvid_cli.serve import ServeConfig  # noqa: E402
from flashvid_cli.serve.page import list_media  # noqa: E402

from serve_server import Server  # noqa: E402
from test_serve import DEMO  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
QUESTION = "How many shapes appear in the video?"
STAGES = ["decode", "preprocess", "encode", "compress", "prefill", "generate"]


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("page-media")
    shutil.copy(REPO / "samples" / "sample.mp4", root / "sample.mp4")
    (root / "notes.txt").write_text("not a video")
    outside = tmp_path_factory.mktemp("page-outside") / "out.mp4"
    shutil.copy(REPO / "samples" / "sample.mp4", outside)
    (root / "link.mp4").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def server(allowed):
    from flashvid_cli.api import VideoQA

    qa = VideoQA(str(DEMO), device="cpu")
    config = ServeConfig(model="tiny", defaults=AskConfig(method="divprune", keep=0.5, max_new_tokens=6),
                         allowed_local_media_path=allowed, max_data_bytes=4000, api_key="s3cret",
                         kv_cache_size=0, video_cache_size=0)  # every request runs every stage
    made = Server(config, qa)
    yield made
    made.stop()


def test_media_lists_only_videos_inside_the_root(allowed):
    listed = list_media(allowed.resolve())
    assert [item["name"] for item in listed] == ["sample.mp4"]  # not the .txt, not the symlink out
    assert listed[0]["url"] == (allowed.resolve() / "sample.mp4").as_uri()
    assert listed[0]["bytes"] == (allowed / "sample.mp4").stat().st_size
    assert list_media(None) == []


def test_page_is_open_and_media_needs_the_key(server):
    import httpx

    page = httpx.get(f"{server.url}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" in page.text and "http" not in page.text.split("<script>")[1].split("fetch(")[0]
    assert "s3cret" not in page.text  # the open page holds no key: the user types it
    assert httpx.get(f"{server.url}/v1/vidq/media", timeout=30).status_code == 401
    wrong = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "tiny", "messages": []}, timeout=30)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    media = httpx.get(f"{server.url}/v1/vidq/media", headers={"Authorization": "Bearer s3cret"}, timeout=30).json()
    assert [item["name"] for item in media["data"]] == ["sample.mp4"]
    assert media["max_data_bytes"] == 4000 and media["model"] == "tiny"


def _png_is_not_blank(data: bytes) -> bool:
    """A valid PNG (signature, IHDR, CRCs) whose decoded pixels are not all one value."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
            assert width > 100 and height > 100
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    raw = zlib.decompress(idat)
    return len(set(raw)) > 16  # filter bytes and pixels: many distinct values (text, six bar colours), not one flat fill


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    yield driver
    driver.quit()


def test_the_page_asks_and_shows_the_answer_and_report(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    expected = server.client("s3cret").chat.completions.create(model="tiny", temperature=0, messages=[
        {"role": "user", "content": [{"type": "video_url", "video_url": {"url": list_media(
            server.app.state.engine.config.allowed_local_media_path)[0]["url"]}},
            {"type": "text", "text": QUESTION}]}])
    browser.get(f"{server.url}/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait = WebDriverWait(browser, 120)
    wait.until(ec.text_to_be_present_in_element((By.ID, "error"), "API key"))  # the media list needs the key
    browser.find_element(By.ID, "key").send_keys("s3cret")
    browser.find_element(By.ID, "reload").click()
    wait.until(lambda d: len(Select(d.find_element(By.ID, "media")).options) == 2)
    assert "4,000 bytes" in browser.find_element(By.ID, "limit").text
    Select(browser.find_element(By.ID, "media")).select_by_index(1)
    browser.find_element(By.ID, "question").send_keys(QUESTION)
    browser.find_element(By.ID, "ask").click()
    wait.until(lambda d: d.find_element(By.ID, "answer").get_attribute("data-done") == "1")
    assert browser.find_element(By.ID, "error").text == ""
    assert browser.find_element(By.ID, "answer").text == expected.choices[0].message.content.strip()
    bars = browser.find_elements(By.CSS_SELECTOR, "#bar .stage")
    assert [bar.get_attribute("data-stage") for bar in bars] == STAGES
    assert sum(bar.size["width"] for bar in bars) > 0
    report = expected.model_extra["vidq"]["report"]["tokens"]
    assert browser.find_element(By.ID, "tokens").text == \
        f"{report['visual_before']} before, {report['visual_after']} after"
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    assert _png_is_not_blank(shot.read_bytes())
    assert all(float(bar.value_of_css_property("width").removesuffix("px")) > 0 for bar in bars[-2:])


def test_the_page_shows_the_servers_error(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server.url}/")
    browser.find_element(By.ID, "key").clear()
    browser.find_element(By.ID, "key").send_keys("s3cret")
    browser.find_element(By.ID, "reload").click()
    WebDriverWait(browser, 60).until(ec.text_to_be_present_in_element((By.ID, "limit"), "4,000"))
    browser.find_element(By.ID, "question").send_keys(QUESTION)
    upload = browser.find_element(By.ID, "upload")
    upload.send_keys(str(REPO / "samples" / "sample.mp4"))  # larger than the 4000-byte cap: refused in the page
    browser.find_element(By.ID, "ask").click()
    WebDriverWait(browser, 60).until(ec.text_to_be_present_in_element((By.ID, "error"), "at most 4,000"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)  # under the cap: sent as a data: URL, refused by the server
    upload.clear()
    upload.send_keys(str(junk))
    browser.find_element(By.ID, "ask").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "error").text != "" and
                                     "at most" not in d.find_element(By.ID, "error").text)
    message = browser.find_element(By.ID, "error").text
    refused = server.client("s3cret").with_options(max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        refused.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,"
                                                + base64.b64encode(junk.read_bytes()).decode()}},
            {"type": "text", "text": QUESTION}]}])
    assert message == caught.value.body["message"] and "video" in message
    assert browser.find_element(By.ID, "answer").text == ""


def test_the_page_keeps_the_key_for_the_tab_and_sends_it_on_every_call(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(f"{server.url}/")
    browser.execute_script("sessionStorage.clear()")
    key = browser.find_element(By.ID, "key")
    key.clear()
    key.send_keys("wrong")
    browser.find_element(By.ID, "reload").click()
    WebDriverWait(browser, 60).until(ec.text_to_be_present_in_element((By.ID, "error"), "API key"))
    assert browser.execute_script("return sessionStorage.getItem('vidq-api-key')") == "wrong"
    key.clear()
    key.send_keys("s3cret")
    browser.find_element(By.ID, "reload").click()
    WebDriverWait(browser, 60).until(lambda d: len(Select(d.find_element(By.ID, "media")).options) == 2)
    browser.refresh()  # a reload: the key comes back from sessionStorage and the list loads with it, untyped
    WebDriverWait(browser, 60).until(lambda d: len(Select(d.find_element(By.ID, "media")).options) == 2)
    assert browser.find_element(By.ID, "key").get_attribute("value") == "s3cret"
    assert browser.find_element(By.ID, "error").text == ""
    key = browser.find_element(By.ID, "key")
    key.clear()  # an emptied field is forgotten too, and the next call goes without a key: 401 in the page
    browser.find_element(By.ID, "reload").click()
    WebDriverWait(browser, 60).until(ec.text_to_be_present_in_element((By.ID, "error"), "API key"))
    assert browser.execute_script("return sessionStorage.getItem('vidq-api-key')") is None
