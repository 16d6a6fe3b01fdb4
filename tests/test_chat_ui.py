"""The chat page in a real browser, against a server listening on a free local port.

The browser is Debian's chromium and chromedriver, named explicitly so that
selenium never tries to download one. Without them these tests skip, unless
SPEEDRUN_REQUIRE_BROWSER is set (CI sets it): then they fail.
"""

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from chat_engines import ScriptedEngine, SlowEngine, talkative_engine

from speedrun.chat.engine import as_plain_text
from speedrun.loading import load_engine
from speedrun.apps.server import create_app

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
MAX_NEW_TOKENS = 16
SECONDS_PER_TOKEN = 0.05  # so that answers sent together are generated together


def user(text):
    return {"role": "user", "content": text}


@contextlib.contextmanager
def running(app):
    """The app served by uvicorn in a thread; yields its address."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def talkative(chat_run):
    return talkative_engine(chat_run)


@pytest.fixture(scope="module")
def live(talkative):
    with running(create_app(SlowEngine(talkative, SECONDS_PER_TOKEN), max_new_tokens=MAX_NEW_TOKENS)) as url:
        yield url


@pytest.fixture(scope="module")
def scripted(chat_run):
    engine = ScriptedEngine(load_engine(chat_run))
    with running(create_app(engine, max_prompt_chars=100)) as url:
        yield url, engine


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        message = f"the browser tests need {', '.join(missing)}: apt-get install chromium chromium-driver"
        if os.environ.get("SPEEDRUN_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def expected(engine, conversation) -> str:
    """The engine's greedy answer to this conversation alone, as the page shows it."""
    return as_plain_text(engine.reply(conversation, temperature=0, max_new_tokens=MAX_NEW_TOKENS)["content"])


def open_page(driver, url, temperature="0"):
    from selenium.webdriver.common.by import By

    driver.get(url)
    field = driver.find_element(By.ID, "temperature")
    field.clear()
    field.send_keys(temperature)


def send(driver, text):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.find_element(By.ID, "input").send_keys(text, Keys.ENTER)


def texts(driver, selector) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.get_property("textContent") for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def wait_for_answers(driver, count):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 15).until(lambda d: len(texts(d, ".message.assistant.done")) == count
                                    or texts(d, ".message.error"))
    assert not texts(driver, ".message.error")
    return texts(driver, ".message.assistant.done .content")


def test_page_shows_the_engines_answers(browser, live, talkative):
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, live)
    conversation = []
    for turn, message in enumerate(["What is 2 plus 3?", "And 40 plus 2?"], start=1):
        send(browser, message)
        conversation.append(user(message))
        WebDriverWait(browser, 10, poll_frequency=0.02).until(  # text shows while the answer is still coming
            lambda d: any(texts(d, ".message.assistant:not(.done) .content")))
        answers = wait_for_answers(browser, turn)
        want = expected(talkative, conversation)
        assert want and answers[-1] == want
        conversation.append(talkative.reply(conversation, temperature=0, max_new_tokens=MAX_NEW_TOKENS))
    assert texts(browser, ".message.user .content") == ["What is 2 plus 3?", "And 40 plus 2?"]
    assert texts(browser, ".message.assistant .note")[-1] == "stopped at the length limit"


def test_two_windows_keep_their_own_conversations(browser, live, talkative):
    messages = {"first": "Spell the word garden.", "second": "What is 7 plus 49?"}
    windows = {"first": browser.current_window_handle}
    browser.switch_to.new_window("window")
    windows["second"] = browser.current_window_handle
    for name, handle in windows.items():
        browser.switch_to.window(handle)
        open_page(browser, live)
    for name, handle in windows.items():  # both answers are being generated at once
        browser.switch_to.window(handle)
        send(browser, messages[name])
    for name, handle in windows.items():
        browser.switch_to.window(handle)
        want = expected(talkative, [user(messages[name])])
        assert wait_for_answers(browser, 1) == [want]
        assert texts(browser, ".message.user .content") == [messages[name]]
    assert expected(talkative, [user(messages["first"])]) != expected(talkative, [user(messages["second"])])
    browser.close()
    browser.switch_to.window(windows["first"])


def test_concurrent_streams_interleave_and_stay_separate(live, talkative):
    """Two conversations at once: both are answered token by token at the same time, each as if alone."""
    conversations = [[user("Spell the word garden.")], [user("What is 7 plus 49?")]]
    results, start = [None, None], threading.Barrier(2)

    def ask(i):
        start.wait()
        arrivals, events = [], []
        with httpx.stream("POST", f"{live}/chat", json={"messages": conversations[i], "temperature": 0},
                          timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: "):]))
                    arrivals.append(time.monotonic())
        results[i] = ("".join(e["text"] for e in events if e["kind"] == "text"), arrivals)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for conversation, (text, _) in zip(conversations, results):
        assert text == expected(talkative, conversation)
    (_, a), (_, b) = results
    assert a[0] < b[-1] and b[0] < a[-1]  # the two answers overlapped in time


def test_tool_calls_system_prompt_errors_and_new_conversation(browser, scripted):
    from selenium.webdriver.common.by import By

    url, engine = scripted
    open_page(browser, url, temperature="0.6")
    browser.find_element(By.ID, "system").send_keys("Be brief.")
    send(browser, "What is 482 plus 137?")
    assert wait_for_answers(browser, 1) == ["Let me add. [calc: 482+137 = 619] It is 619."]
    assert texts(browser, ".message.assistant .tool") == ["[calc: 482+137 = 619]"]
    send(browser, "Thanks")
    wait_for_answers(browser, 2)
    reply = {"role": "assistant", "content": [{"type": "text", "text": "Let me add. "},
                                              {"type": "tool_call", "text": "482+137"},
                                              {"type": "tool_output", "text": "619"},
                                              {"type": "text", "text": " It is 619."}]}
    system = {"role": "system", "content": "Be brief."}
    assert engine.received[-1] == [system, user("What is 482 plus 137?"), reply, user("Thanks")]

    send(browser, "x" * 100)  # over the server's 100 characters with what came before
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(lambda d: texts(d, ".message.error"))
    assert "characters" in texts(browser, ".message.error")[0]
    assert len(engine.received) == 2
    assert browser.find_element(By.ID, "input").get_property("value") == "x" * 100  # back, to edit

    browser.find_element(By.ID, "new").click()
    assert texts(browser, ".message") == []
    browser.find_element(By.ID, "input").clear()
    send(browser, "Hello again")
    wait_for_answers(browser, 1)
    assert engine.received[-1] == [system, user("Hello again")]
