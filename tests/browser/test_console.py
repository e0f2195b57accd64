"""The web console in a real headless Chromium (Debian's `chromium`, driven by Playwright),
against a real `interlock serve` process and real worker processes.

Screenshots of the main pages are kept under `.artifacts/console/`.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

from tests.conftest import require_program
from tests.support.processes import CLIENT_TOKEN, ROOT, WORKER_TOKEN, Server, serve, worker

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

ARTIFACTS = ROOT / ".artifacts" / "console"
STEP_TASKS = "fetch_image,resize_image,publish_image,pay_expense"
WAIT_MS = 20_000  # the longest any page waits for what it should show

# A blueprint whose own text is hostile: the console must show it as text.
HOSTILE_BLUEPRINT = """\
blueprint: hostile_probe
version: 1
description: "<img src=x onerror=\\"window.__xss='blueprint'\\"> a hostile description"
api_endpoint: jobs/hostile_probe
input_schema:
  type: object
  properties:
    note:
      type: string
      description: "<script>window.__xss='schema'</script>"
      not: {const: forbidden}  # a keyword the console leaves to the server
start: done
states:
  done: {end: finished, output: {echo: "${ initial_data.note }"}}
"""
HOSTILE_NOTE = "<script>window.__xss='data'</script><img src=x onerror=\"window.__xss='img'\">"


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The example blueprints (plus the hostile one) served on the embedded store, with a
    worker for the pipeline and payment steps (1 s per task, so states can be watched, with
    a progress report of 50% at the start of each),
    one that hangs on `charge_card`, and one whose `check_inventory` fails for good."""
    tmp = tmp_path_factory.mktemp("console")
    blueprints = tmp / "blueprints"
    shutil.copytree(ROOT / "blueprints", blueprints)
    (blueprints / "hostile_probe.yaml").write_text(HOSTILE_BLUEPRINT, encoding="utf-8")
    with (
        serve(tmp, "memory://", blueprints) as server,
        worker(tmp, server.url, "w-steps", STEP_TASKS, "--delay", "1", "--progress"),
        worker(tmp, server.url, "w-hang", "charge_card", "--hang"),
        worker(
            tmp, server.url, "w-broken", "check_inventory", "--fail-first", "9",
            "--fail-code", "PERMANENT_ERROR",
        ),
    ):  # fmt: skip
        yield server
        # No page put the token in a URL, so the access log never shows it.
        assert CLIENT_TOKEN not in server.output()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = require_program("chromium", "apt-get install chromium, or: make chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, console: Server) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) that fails the test on any script error,
    Content-Security-Policy violation, or request to another origin than the server (the
    console must work offline: every file it loads ships in the package)."""
    context: BrowserContext = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            problems.append(f"console error: {message.text}")

    tab.on("console", on_console)
    tab.on(
        "request",
        lambda request: (
            None
            if request.url.startswith((console.url + "/", "data:", "blob:"))
            else problems.append(f"request to another origin: {request.url}")
        ),
    )
    yield tab
    context.close()
    assert problems == []


# -- helpers --------------------------------------------------------------------------------


def call(server: Server, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        server.url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"X-Client-Token": CLIENT_TOKEN, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def submit(server: Server, endpoint: str, data: dict[str, Any]) -> str:
    job_id: str = call(server, "POST", f"/api/v1/{endpoint}", {"initial_data": data})["job_id"]
    return job_id


def sign_in(page: Page, server: Server, hash_: str = "") -> None:
    page.goto(f"{server.url}/{hash_}")
    page.fill("#token", CLIENT_TOKEN)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")


def open_job(page: Page, server: Server, job_id: str) -> None:
    sign_in(page, server, f"#/jobs/{job_id}")
    page.wait_for_selector("#job-summary .badge")


def wait_status(page: Page, status: str) -> None:
    page.wait_for_selector(f"#job-summary .badge[data-status='{status}']")


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# -- stories ----------------------------------------------------------------------------------


def test_sign_in_and_see_a_blueprint_graph(page: Page, console: Server) -> None:
    # Given the console, when a wrong token is tried, then it says so and shows nothing else
    page.goto(console.url + "/")
    page.fill("#token", "not-the-token")
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("#signin-error:has-text('not valid')")
    assert page.locator("#nav").is_hidden()
    shot(page, "sign-in")
    # When the right token is given, then the jobs page opens; the token is kept for this
    # tab only (sessionStorage), never in the URL or in localStorage
    page.fill("#token", CLIENT_TOKEN)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("#jobs")
    assert page.evaluate("sessionStorage.getItem('interlock.clientToken')") == CLIENT_TOKEN
    assert page.evaluate("localStorage.length") == 0
    assert CLIENT_TOKEN not in page.url
    # When the blueprints page is opened, then it lists every loaded blueprint
    page.click("#nav a[data-nav=blueprints]")
    page.wait_for_selector("#blueprints tbody tr")
    names = page.locator("#blueprints tbody tr td:first-child").all_inner_texts()
    assert "image_pipeline" in names
    assert "expense_approval" in names
    assert len(names) == len(call(console, "GET", "/api/v1/blueprints")["blueprints"])
    shot(page, "blueprints")
    # When a blueprint is opened, then its graph is an SVG drawn in the browser, one node
    # per state, and the DOT can be copied and opened in Graphviz Online
    page.click("#blueprints a:text-is('image_pipeline')")
    page.wait_for_selector("#graph svg g.node")
    nodes = page.locator("#graph svg g.node title").all_text_contents()
    assert {"fetch", "resize", "publish", "done", "failed"} <= set(nodes)
    dot = fetch_text(console, "/api/v1/blueprints/image_pipeline/graph")
    href = page.get_attribute("#graphviz-online", "href")
    assert href is not None
    assert href.startswith("https://dreampuf.github.io/GraphvizOnline/#digraph")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console.url)
    page.click("#copy-dot")
    page.wait_for_selector("#copied:has-text('DOT copied')")
    assert page.evaluate("navigator.clipboard.readText()") == dot
    shot(page, "blueprint")


def fetch_text(server: Server, path: str) -> str:
    request = urllib.request.Request(server.url + path, headers={"X-Client-Token": CLIENT_TOKEN})
    with urllib.request.urlopen(request, timeout=10) as response:
        text: str = response.read().decode()
        return text


# Records each summary the job page shows (status and state), so a test can tell that
# the page moved through the states by itself.
WATCH_SUMMARY = """() => {
  window.__seen = [];
  window.__mark = "no reload";
  const note = () => {
    const badge = document.querySelector('#job-summary .badge');
    const text = document.querySelector('#job-summary')?.textContent || '';
    const state = (text.match(/state (\\w+)/) || [])[1] || '';
    const entry = (badge ? badge.dataset.status : '') + ':' + state;
    if (window.__seen[window.__seen.length - 1] !== entry) window.__seen.push(entry);
    if (document.querySelector('#job-summary progress')) window.__bar = true;
  };
  note();
  new MutationObserver(note).observe(document.getElementById('app'),
    {subtree: true, childList: true, characterData: true});
}"""


def test_submit_from_the_form_and_watch_the_job_run(page: Page, console: Server) -> None:
    # Given the image_pipeline blueprint page
    sign_in(page, console, "#/blueprints/image_pipeline")
    page.wait_for_selector("#submit-job")
    # Then the form holds an example that the input schema accepts
    example = json.loads(page.input_value("#initial-data"))
    assert isinstance(example["url"], str)
    assert example["url"]
    # When the form holds data the input schema refuses, then nothing is sent and the
    # problems are listed by path
    before = len(call(console, "GET", "/api/v1/jobs?blueprint=image_pipeline")["jobs"])
    page.fill("#initial-data", '{"width": 0}')
    page.click("#submit-job button[type=submit]")
    problems = page.locator("#submit-problems li")
    problems.first.wait_for()
    assert set(problems.all_inner_texts()) == {"$.url: is required", "$.width: must be at least 1"}
    page.fill("#initial-data", "{not json")
    page.click("#submit-job button[type=submit]")
    page.wait_for_selector("#submit-problems li:has-text('not valid JSON')")
    assert len(call(console, "GET", "/api/v1/jobs?blueprint=image_pipeline")["jobs"]) == before
    # When valid data is submitted, then the job's page opens and follows the job live as
    # the worker runs each step, without reloading, until it has finished
    page.fill("#initial-data", '{"url": "https://example.test/cat.png", "width": 64}')
    page.click("#submit-job button[type=submit]")
    page.wait_for_url("**/#/jobs/*")
    page.wait_for_selector("#job-summary .badge")
    page.evaluate(WATCH_SUMMARY)
    wait_status(page, "finished")
    seen: list[str] = page.evaluate("window.__seen")
    assert page.evaluate("window.__mark") == "no reload"
    assert seen[-1] == "finished:done", seen
    assert page.evaluate("window.__bar === true")  # a running task's progress bar was shown
    states_seen = {entry.split(":")[1] for entry in seen[:-1]}
    assert len(states_seen & {"fetch", "resize", "publish"}) >= 2, seen
    # And the history shows each task attempt with its worker and duration, the result
    # and the input are shown as JSON, and the graph marks the path taken
    page.wait_for_selector("#timeline li[data-event=task_result]")
    results = page.locator("#timeline li[data-event=task_result]").all_inner_texts()
    assert len(results) == 3
    assert all("worker w-steps" in line and " ms" in line for line in results), results
    bars = page.locator("#timeline li[data-event=task_progress] progress")
    assert [bar.get_attribute("value") for bar in bars.all()] == ["0.5"] * 3
    assert "halfway" in page.inner_text("#timeline li[data-event=task_progress] >> nth=0")
    assert '"thumbnail"' in page.inner_text("#outcome")
    assert '"url": "https://example.test/cat.png"' in page.inner_text("#initial-data")
    page.wait_for_selector("#graph svg g.node")
    assert page.locator("#actions button").count() == 0  # nothing to do with a finished job
    shot(page, "job")


def test_the_jobs_table_pages_filters_and_updates_live(page: Page, console: Server) -> None:
    # Given 52 jobs of one blueprint (they finish at once: it has no task)
    ids = [submit(console, "jobs/hostile_probe", {"note": f"n{i}"}) for i in range(52)]
    # When the jobs table is filtered by that blueprint
    sign_in(page, console, "#/jobs?blueprint=hostile_probe")
    rows = page.locator("#jobs tbody tr[data-job]")
    page.wait_for_selector("#jobs tbody tr[data-job]")
    # Then it shows the newest 50 first, and the next page the other two
    assert rows.count() == 50
    assert rows.first.get_attribute("data-job") == ids[-1]
    page.click("#next-page")
    page.wait_for_function(
        "() => document.querySelectorAll('#jobs tbody tr[data-job]').length === 2"
    )
    assert [r.get_attribute("data-job") for r in rows.all()] == ids[1::-1]
    page.click("#prev-page")
    page.wait_for_function(
        "() => document.querySelectorAll('#jobs tbody tr[data-job]').length === 50"
    )
    # When a status filter is chosen, then only such jobs are listed
    page.select_option("#filter-status", "cancelled")
    page.wait_for_selector("#jobs tbody td:has-text('No jobs.')")
    page.select_option("#filter-status", "finished")
    page.wait_for_selector("#jobs tbody tr[data-job]")
    # When a new job is submitted while the table is open, then it appears without reload
    page.evaluate("window.__mark = 'no reload'")
    new_id = submit(console, "jobs/hostile_probe", {"note": "late"})
    page.wait_for_selector(f"#jobs tbody tr[data-job='{new_id}']")
    assert page.evaluate("window.__mark") == "no reload"
    assert rows.first.get_attribute("data-job") == new_id
    shot(page, "jobs")


# The state whose node carries the "current" label in the drawn graph equals `arg`.
CURRENT_MARKED = """(state) => {
  const nodes = [...document.querySelectorAll('#graph svg g.node')];
  const isCurrent = (n) => [...n.querySelectorAll('text')].some((t) => t.textContent === 'current');
  const names = nodes.filter(isCurrent).map((n) => n.querySelector('title').textContent);
  if (state === null) return nodes.length > 0 && names.length === 0;
  return names.length === 1 && names[0] === state;
}"""


def test_approve_a_job_waiting_for_approval(page: Page, console: Server) -> None:
    # Given a job waiting for a person
    job_id = submit(console, "jobs/expense_approval", {"amount": 12.5, "employee": "ada"})
    open_job(page, console, job_id)
    wait_status(page, "waiting_for_human")
    # Then its page asks the approval's question with the approval's own decisions
    assert page.inner_text("#approval-message") == "Approve 12.5 for ada?"
    decisions = page.locator("#actions button[data-decision]")
    assert [d.get_attribute("data-decision") for d in decisions.all()] == ["approve", "reject"]
    # And its graph marks the state it waits in as the current one
    page.wait_for_function(CURRENT_MARKED, arg="review")
    shot(page, "job-approval")
    # When approve is clicked, then the job goes on to pay and finishes, and the graph,
    # redrawn, marks no state as current any more
    page.click("#actions button[data-decision=approve]")
    wait_status(page, "finished")
    page.wait_for_function(CURRENT_MARKED, arg=None)
    assert page.locator("#timeline li[data-event=approval_decided]").count() == 1
    assert "decision approve" in page.inner_text("#timeline li[data-event=approval_decided]")


def test_cancel_a_running_job(page: Page, console: Server) -> None:
    # Given a job whose task a worker holds (and never finishes)
    job_id = submit(console, "jobs/charge", {"card_token": "tok", "amount": 5})
    open_job(page, console, job_id)
    wait_status(page, "running")
    # When cancel is clicked, then the job is cancelled and says so
    page.click("#cancel")
    wait_status(page, "cancelled")
    assert "CANCELLED" in page.inner_text("#job-error")
    assert page.locator("#cancel").count() == 0
    assert call(console, "GET", f"/api/v1/jobs/{job_id}")["status"] == "cancelled"


def test_a_failed_jobs_error_is_shown(page: Page, console: Server) -> None:
    # Given a job whose worker fails its task for good
    job_id = submit(console, "jobs/process_order", {"items": [1]})
    open_job(page, console, job_id)
    # Then its page ends on `failed` with the error, and the history shows the task's error
    wait_status(page, "failed")
    error = call(console, "GET", f"/api/v1/jobs/{job_id}")["error"]
    assert page.inner_text("#job-error") == f"{error['code']}: {error['message']}"
    assert "PERMANENT_ERROR" in page.inner_text("#timeline")
    assert "simulated failure" in page.inner_text("#timeline")
    shot(page, "job-failed")


def test_blueprint_and_job_data_render_as_text(page: Page, console: Server) -> None:
    # Given a blueprint and a job whose text holds markup and script
    job_id = submit(console, "jobs/hostile_probe", {"note": HOSTILE_NOTE})
    # When their pages are shown, then the markup is shown as text and nothing runs
    open_job(page, console, job_id)
    wait_status(page, "finished")
    # (shown as pretty JSON: the same string, quoted as JSON quotes it)
    assert json.dumps(HOSTILE_NOTE) in page.inner_text("#initial-data")
    assert json.dumps(HOSTILE_NOTE) in page.inner_text("#outcome")
    page.goto(f"{console.url}/#/jobs?blueprint=hostile_probe")
    page.wait_for_selector(f"#jobs tbody tr[data-job='{job_id}']")
    page.goto(f"{console.url}/#/blueprints/hostile_probe")
    page.wait_for_selector("#graph svg")
    assert "<img src=x onerror=" in page.inner_text("#app")
    assert "<script>window.__xss='schema'</script>" in page.inner_text("#app")
    assert page.evaluate("window.__xss") is None
    assert page.locator("#app img, #app script").count() == 0


def test_the_server_checks_what_the_form_does_not(page: Page, console: Server) -> None:
    # Given a blueprint whose input schema uses a keyword the console does not check
    sign_in(page, console, "#/blueprints/hostile_probe")
    page.wait_for_selector("#submit-job")
    # When data breaking it is submitted, then the server's 400 is shown, naming the field
    page.fill("#initial-data", '{"note": "forbidden"}')
    page.click("#submit-job button[type=submit]")
    page.wait_for_selector("#submit-problems li:has-text('$.note')")
    assert "does not match the input_schema" in page.inner_text("#submit-problems")
    assert "#/blueprints/hostile_probe" in page.url


def test_the_workers_page(page: Page, console: Server) -> None:
    # Given the three workers of this server
    sign_in(page, console, "#/workers")
    # Then each is listed with its task types, and every task type has a queue depth
    for worker_id in ("w-steps", "w-hang", "w-broken"):
        page.wait_for_selector(f"#workers tr[data-worker='{worker_id}']")
    steps = page.inner_text("#workers tr[data-worker='w-steps']")
    assert "fetch_image, resize_image, publish_image, pay_expense" in steps
    assert "yes" in steps
    page.wait_for_selector("#queues tr[data-queue='fetch_image']")
    assert page.inner_text("#queues tr[data-queue='ocr']").split() == ["ocr", "0", "no"]
    shot(page, "workers")
    # When another worker registers while the page is open, then it appears by itself
    page.evaluate("window.__mark = 'no reload'")
    register = urllib.request.Request(
        console.url + "/_worker/workers/register",
        method="POST",
        data=json.dumps({"worker_id": "w-late", "supported_skills": [{"name": "ocr"}]}).encode(),
        headers={
            "X-Worker-ID": "w-late",
            "X-Worker-Token": WORKER_TOKEN,
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(register, timeout=10) as response:
        assert response.status == 200
    page.wait_for_selector("#workers tr[data-worker='w-late']")
    assert page.evaluate("window.__mark") == "no reload"
