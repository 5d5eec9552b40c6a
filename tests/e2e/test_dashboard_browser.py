"""The dashboard in a real headless Chromium: data, escaping, tracebacks, live progress, buttons."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from .png import decode
from .servers import E2E, EXAMPLES, Server, poll, read_sse, serve

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")
By = "css selector"
#: the seeded server, and the ids of its jobs by role
Site = tuple[Server, dict[str, str]]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    """The dashboard test app under uvicorn, seeded with jobs in every state."""
    workdir = tmp_path_factory.mktemp("dashboard")
    with serve("e2e.dashboard_app:app", app_dir=E2E.parent, workdir=workdir) as server:
        ids = httpx.post(server.url + "/seed").json()
        for key in ("failed", "hostile"):
            poll(lambda k=key: status(server, ids[k]) == "dead", 15, f"{key} job is dead")
        yield server, ids
        assert server.stop() == 0, server.output()


def status(server: Server, job_id: str) -> str:
    """The job's status, from the REST API."""
    return str(httpx.get(f"{server.url}/jobs/{job_id}").json()["status"])


def until(browser: Any, condition: Callable[[], T | None], message: str, timeout: float = 15) -> T:
    """Poll ``condition`` (which may touch elements the page re-renders) until truthy."""
    from selenium.common.exceptions import StaleElementReferenceException

    def attempt() -> T | None:
        try:
            return condition()
        except StaleElementReferenceException:
            return None

    try:
        return poll(attempt, timeout, message)
    except AssertionError:
        raise AssertionError(f"{message}; browser log: {browser.get_log('browser')}") from None


def text(browser: Any, selector: str) -> str:
    """The rendered text of the first element matching ``selector`` ('' when there is none).

    Read in one step in the page, so a re-render between finding and reading cannot interfere.
    """
    script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';"
    return str(browser.execute_script(script, selector))


def click(browser: Any, selector: str) -> None:
    """Click the first element matching ``selector``, once the page has it (re-renders tolerated)."""

    def attempt() -> bool:
        found = browser.find_elements(By, selector)
        if not found:
            return False
        found[0].click()
        return True

    until(browser, attempt, f"to click {selector}")


def open_dashboard(browser: Any, server: Server) -> None:
    """Load the dashboard and wait for its first data."""
    browser.get(server.url + "/jobs/ui")
    until(browser, lambda: text(browser, '#counts [data-status="total"] .n') not in ("", "0"),
          "the counts to load")


def test_dashboard_renders_with_data(browser: Any, site: Site, tmp_path: Path) -> None:
    """Counts by status, recent and failed jobs are on the page, and the screenshot shows them."""
    server, ids = site
    open_dashboard(browser, server)
    until(browser, lambda: text(browser, '#counts [data-status="dead"] .n') == "2", "2 dead jobs counted")
    assert text(browser, '#counts [data-status="total"] .n') == "7"
    assert text(browser, '#counts [data-status="succeeded"] .n') == "3"
    until(browser, lambda: len(browser.find_elements(By, "#recent tbody tr[data-job-id]")) == 7,
          "7 recent jobs listed")
    failures = browser.find_elements(By, "#failed .failure")
    assert {f.get_attribute("data-job-id") for f in failures} == {ids["failed"], ids["hostile"]}
    assert "SMTP server refused the connection for ops@example.com" in text(browser, "#failed")
    assert "connecting" not in text(browser, "#conn") and text(browser, "#conn") == "live"

    png = browser.get_screenshot_as_png()
    (tmp_path / "dashboard.png").write_bytes(png)
    image = decode(png)
    assert image.width >= 1000 and image.height >= 600
    colours = image.colours(step=1)
    assert len(colours) > 100, "the page is not blank"
    for name, rgb in {"dead badge": (0x91, 0x20, 0x18), "succeeded badge": (0x07, 0x94, 0x55),
                      "header": (0x10, 0x18, 0x28)}.items():
        assert rgb in colours, f"no {name} colour {rgb} in the screenshot"


def test_user_data_is_escaped(browser: Any, site: Site) -> None:
    """Markup in job arguments and error messages shows as text and never runs."""
    server, ids = site
    open_dashboard(browser, server)
    hostile = f'#failed .failure[data-job-id="{ids["hostile"]}"]'
    until(browser, lambda: browser.find_elements(By, hostile), "the hostile failure is listed")
    assert '<img src=x onerror="window.__xss=1">' in text(browser, hostile)
    click(browser, f"{hostile} .head strong")
    until(browser, lambda: ids["hostile"] in text(browser, "#detail-body"), "its record in the panel")
    assert "<script>window.__xss=2</script>" in text(browser, '#detail-body [data-role="args"]')
    assert browser.execute_script("return window.__xss") is None
    assert browser.find_elements(By, "img") == []
    assert len(browser.find_elements(By, "script")) == 1


def test_traceback_is_shown(browser: Any, site: Site) -> None:
    """A failed job's error type, message and traceback can be read on the page."""
    server, ids = site
    open_dashboard(browser, server)
    failure = f'#failed .failure[data-job-id="{ids["failed"]}"]'
    until(browser, lambda: browser.find_elements(By, failure), "the failure is listed")
    click(browser, f"{failure} summary")
    trace = until(
        browser,
        lambda: (t := text(browser, f"{failure} pre.traceback")) and "Traceback" in t and t,
        "the traceback to show",
    )
    assert "Traceback (most recent call last)" in trace
    assert "ConnectionRefusedError: SMTP server refused the connection for ops@example.com" in trace
    assert "dashboard_app.py" in trace


def test_progress_is_followed_live(browser: Any, site: Site) -> None:
    """Selecting a running job follows its progress over SSE until it succeeds."""
    server, ids = site
    open_dashboard(browser, server)
    row = f'#recent tbody tr[data-job-id="{ids["converting"]}"]'
    until(browser, lambda: browser.find_elements(By, row), "the running job is listed")
    click(browser, f"{row} td:nth-child(2)")
    progress = '#detail-body [data-role="progress-text"]'
    until(browser, lambda: ids["converting"] in text(browser, "#detail-body"), "the panel shows the job")
    for step, percent in enumerate(("25%", "50%", "75%", "100%"), start=1):
        httpx.post(server.url + "/step")
        until(browser, lambda p=percent, s=step: p in text(browser, progress) and f"segment {s} of 4" in text(
            browser, progress), f"progress {percent}")
    until(browser, lambda: "succeeded" in text(browser, "#detail-body .badge"), "the job succeeded")
    until(browser, lambda: "holiday.webm" in text(browser, '#detail-body [data-role="result"]'), "result")


def test_cancel_button_cancels_a_waiting_job(browser: Any, site: Site) -> None:
    """The Cancel button of a scheduled job cancels it."""
    server, ids = site
    open_dashboard(browser, server)
    button = f'#recent tbody tr[data-job-id="{ids["waiting"]}"] button.cancel'
    until(browser, lambda: browser.find_elements(By, button), "the cancel button")
    click(browser, button)
    poll(lambda: status(server, ids["waiting"]) == "cancelled", 10, "the job is cancelled")
    until(browser, lambda: text(browser, f'#recent tbody tr[data-job-id="{ids["waiting"]}"] .badge')
          == "cancelled", "the row shows it")
    assert "is cancelled" in str(browser.find_element(By, "#message").get_attribute("textContent"))


def test_retry_button_runs_a_dead_job_again(browser: Any, site: Site) -> None:
    """The Retry button of a dead job puts it back; it runs (and here dies) again."""
    server, ids = site
    open_dashboard(browser, server)
    button = f'#failed .failure[data-job-id="{ids["failed"]}"] button.retry'
    until(browser, lambda: browser.find_elements(By, button), "the retry button")
    click(browser, button)

    def deaths() -> int:
        with httpx.stream("GET", f"{server.url}/jobs/{ids['failed']}/events", timeout=10) as response:
            if response.status_code != 200:
                return 0
            events = [json.loads(e["data"]) for e in read_sse(response.iter_lines())]
        return sum(1 for e in events if e["data"].get("status") == "dead")

    poll(lambda: status(server, ids["failed"]) == "dead" and deaths() == 2, 15, "it ran again and died again")


def test_welcome_example_failure_is_visible_in_the_dashboard(browser: Any, tmp_path: Path) -> None:
    """In the welcome-email example a rejected address shows on the dashboard as dead, with its error."""
    env = {"USERS_DB": str(tmp_path / "users.db")}
    with serve("welcome_email:app", app_dir=EXAMPLES, workdir=tmp_path, env=env) as server:
        created = httpx.post(server.url + "/users", json={"email": "x@bounce.example", "name": "X"}).json()
        poll(lambda: status(server, created["welcome_job"]) == "dead", 20, "the welcome job dies")
        open_dashboard(browser, server)
        failure = f'#failed .failure[data-job-id="{created["welcome_job"]}"]'
        until(browser, lambda: browser.find_elements(By, failure), "the dead job is listed")
        assert "welcome_email.MailRejected" in text(browser, failure)
        assert "550 5.1.1 <x@bounce.example>: mailbox unavailable" in text(browser, failure)
        assert server.stop() == 0


def test_progress_example_page_shows_the_conversion(browser: Any, tmp_path: Path) -> None:
    """The progress example's page starts a conversion and its bar fills up over SSE."""
    with serve("progress:app", app_dir=EXAMPLES, workdir=tmp_path,
               env={"CONVERT_STEP_SECONDS": "0.1"}) as server:
        browser.get(server.url + "/")
        click(browser, "#start")
        until(browser, lambda: "encoded segment" in text(browser, "#message"), "progress arrives")
        until(browser, lambda: text(browser, "#status") == "succeeded", "the conversion succeeds")
        assert browser.find_element(By, "#bar").get_attribute("value") == "1"
        assert text(browser, "#result") == "done: holiday.webm"
        assert server.stop() == 0
