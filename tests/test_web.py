"""The demo page ``vlgraft serve`` shows at /, driven in a real headless chromium against a real server
process: upload an image, ask, and the answer streamed into the chat equals the server's own
non-streamed answer (asked through the official openai client); a second turn re-sends the history;
Clear empties the chat; with --api-key the page asks for the key, shows the server's error, and
remembers the key.

By default the model is a tiny one trained here (its answers are noise, but deterministic). For a
real run: VLGRAFT_WEB_RUN=<run folder>, VLGRAFT_WEB_IMAGE=<image>, VLGRAFT_WEB_EXPECT=<the answer,
e.g. a colour>. VLGRAFT_WEB_SCREENSHOT=<file.png> saves a screenshot of the page (for the docs).
chromium and chromedriver come from scripts/browser.sh; without them the tests fail, saying so."""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # trains a model, starts a server process and a browser

QUESTION = "What color is the shape?"
FOLLOW_UP = "Is it a square?"
WAIT_S = 300  # for an answer or a server start: a loaded 2-core machine is slow


@pytest.fixture(scope="module", autouse=True)
def _browser_installed():
    """First, before any training: a missing browser fails the tests (never a silent skip)."""
    missing = [name for name in ("chromium", "chromedriver") if not shutil.which(name)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: run `bash scripts/browser.sh` to install them")


@pytest.fixture(scope="module")
def run_dir(request, tmp_path_factory) -> Path:
    if os.environ.get("VLGRAFT_WEB_RUN"):
        return Path(os.environ["VLGRAFT_WEB_RUN"])
    import vlgraft

    # Fixtures looked up only here, so a real run does not build the tiny parts.
    llms, clip, data, recipe_dict = (request.getfixturevalue(name)
                                     for name in ("tiny_llms", "tiny_clip", "tiny_data", "recipe_dict"))
    return Path(vlgraft.train(recipe_dict(llms["llama"], clip, data, tmp_path_factory.mktemp("web") / "run")))


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    if os.environ.get("VLGRAFT_WEB_IMAGE"):
        return Path(os.environ["VLGRAFT_WEB_IMAGE"]).resolve()
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (40, 40), (220, 30, 30)).save(path)  # like the tiny training data's red squares
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


@contextmanager
def _server(run: Path, log: Path, *extra: str):
    """A `vlgraft serve` process on a free port; yields its base URL once /health answers 200."""
    port = _free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vlgraft.cli", "serve", str(run), "--port", str(port), *extra],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vlgraft serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if _get(f"{url}/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vlgraft serve did not answer /health in {WAIT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    # --no-sandbox: chromium refuses to run as root with its sandbox; the page is our own.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,760"):
        opts.add_argument(arg)
    # An explicit driver path: selenium-manager (which would go to the network) is not used.
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def _data_url(path: Path) -> str:
    """The image as the page sends it: FileReader.readAsDataURL of the file's bytes."""
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _reference(url: str, model: str, messages: list, api_key: str = "x") -> str:
    """The server's non-streamed answer, asked through the official client."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key)
    return client.chat.completions.create(model=model, messages=messages).choices[0].message.content.strip()


class Page:
    """The demo page by its stable element ids."""

    def __init__(self, driver, url: str):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.wait = lambda cond, timeout=WAIT_S: WebDriverWait(driver, timeout).until(cond)
        driver.get(url + "/")
        self.wait(lambda d: self.el("#model-name").text, 30)  # v1/vlgraft/info has been read

    def el(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def upload(self, path: Path):
        self.el("#image-input").send_keys(str(path))
        self.wait(lambda d: self.el("#preview").is_displayed(), 30)

    def ask(self, question: str, enter: bool = False):
        """Type the question, send it (button or Enter), wait for the answer; returns its element."""
        from selenium.webdriver.common.keys import Keys

        n = len(self.all(".message.assistant.done"))
        self.el("#question").send_keys(question + (Keys.ENTER if enter else ""))
        if not enter:
            self.el("#send").click()
        self.wait(lambda d: len(self.all(".message.assistant.done")) > n)
        return self.all(".message.assistant")[-1]

    def error(self) -> str:
        return self.el("#error").get_attribute("textContent")


def _shown(message) -> str:
    return message.get_attribute("textContent").strip()


def _normal(answer: str) -> str:
    return answer.strip().rstrip(".!").lower()


def test_page_streams_the_servers_answer_over_two_turns(run_dir, image, browser, tmp_path):
    with _server(run_dir, tmp_path / "serve.log") as url:
        info = json.loads(_get(f"{url}/v1/vlgraft/info")[1])
        page = Page(browser, url)
        assert page.el("#model-name").text == info["model"]
        assert page.el("#recipe").get_attribute("textContent") == info["recipe"]
        assert not page.el("#api-key").is_displayed()  # no --api-key: no key field

        page.upload(image)
        first = page.ask(QUESTION)
        history = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(image)}},
                                                {"type": "text", "text": QUESTION}]}]
        answer = _shown(first)
        assert "error" not in first.get_attribute("class"), answer
        assert answer and answer == _reference(url, info["model"], history)
        if os.environ.get("VLGRAFT_WEB_EXPECT"):
            assert _normal(answer) == _normal(os.environ["VLGRAFT_WEB_EXPECT"])

        # The second turn re-sends the whole history, image first: the same answer as the client's.
        second = page.ask(FOLLOW_UP, enter=True)
        history += [{"role": "assistant", "content": answer}, {"role": "user", "content": FOLLOW_UP}]
        assert "error" not in second.get_attribute("class"), _shown(second)
        assert _shown(second) == _reference(url, info["model"], history)
        assert [_shown(m) for m in page.all(".message.user")] == [QUESTION, FOLLOW_UP]
        assert not page.error()
        if os.environ.get("VLGRAFT_WEB_SCREENSHOT"):
            browser.save_screenshot(os.environ["VLGRAFT_WEB_SCREENSHOT"])

        page.el("#clear").click()
        assert page.all("#messages > *") == [] and not page.el("#preview").is_displayed()


def test_api_key_field_error_and_retry(run_dir, image, browser, tmp_path):
    with _server(run_dir, tmp_path / "serve.log", "--api-key", "sesame") as url:
        page = Page(browser, url)
        assert page.el("#api-key").is_displayed()
        page.upload(image)
        failed = page.ask(QUESTION)  # no key yet: the server's 401 message is shown, in the chat too
        assert "error" in failed.get_attribute("class")
        assert page.error() and page.error() in _shown(failed)
        assert page.el("#question").get_attribute("value") == QUESTION  # kept, to retry

        page.el("#api-key").send_keys("sesame")
        page.el("#send").click()
        page.wait(lambda d: len(page.all(".message.assistant.done")) == 2)
        answer = _shown(page.all(".message.assistant")[-1])
        model = page.el("#model-name").text
        history = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(image)}},
                                                {"type": "text", "text": QUESTION}]}]
        assert answer and answer == _reference(url, model, history, api_key="sesame")
        assert not page.error()

        page = Page(browser, url)  # a reload keeps the key (localStorage)
        assert page.el("#api-key").get_attribute("value") == "sesame"
