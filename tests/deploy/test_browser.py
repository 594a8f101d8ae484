"""What a person sees: the smoke pipeline run through a deployment on `staged servers`, then the
Prefect UI's flow-run page and the MLflow UI's registered-model page opened in headless Chromium
(Debian's `chromium`, driven by Playwright). Screenshots go to $STAGED_SCREENSHOTS (default: a
temporary directory); the README's images in docs/img/ were made with STAGED_SCREENSHOTS=docs/img."""

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.deployed import api

pytestmark = [pytest.mark.integration, pytest.mark.browser]
STAGES = ["stage-1-3L", "stage-2-6L", "stage-3-12L"]


@pytest.fixture(scope="module")
def page(tmp_path_factory, local_servers):
    chromium = os.environ.get("STAGED_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on PATH: .ci/run installs Debian's `chromium` package")
        pytest.skip("no chromium on PATH (apt-get install chromium, or set STAGED_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        env = local_servers.client_env()  # both UIs ask for credentials: log in as a person would
        mlflow_login = {"username": env["MLFLOW_TRACKING_USERNAME"], "password": env["MLFLOW_TRACKING_PASSWORD"]}
        context = browser.new_context(viewport={"width": 1400, "height": 900}, http_credentials=mlflow_login)
        page = context.new_page()
        page.set_default_timeout(30_000)
        _log_into_prefect(page, local_servers.urls["prefect"], env["PREFECT_API_AUTH_STRING"])
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("STAGED_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _log_into_prefect(page, url: str, auth_string: str) -> None:
    """The Prefect UI's login page (shown because the API needs the auth string), filled in and submitted."""
    page.goto(url)
    field = page.locator("input").first
    field.wait_for()
    field.fill(auth_string)
    page.get_by_role("button").first.click()
    page.wait_for_url(lambda u: "login" not in u)


def _artifact(servers, flow_run_id, key: str):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    filter = ArtifactFilter(key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    (artifact,) = api(servers, lambda client: client.read_artifacts(artifact_filter=filter))
    return artifact


def _lines(page) -> list[str]:
    return [line.strip() for line in page.inner_text("body").splitlines() if line.strip()]


def test_prefect_flow_run_page_shows_three_completed_stages_and_the_summary(deployed_run, page, shots):
    servers, flow_run = deployed_run
    page.goto(f"{servers.urls['prefect']}/runs/flow-run/{flow_run.id}")
    page.get_by_text(flow_run.name, exact=True).first.wait_for()
    for name in STAGES:  # the run graph labels each task run by name
        page.get_by_text(name, exact=True).first.wait_for()
    page.screenshot(path=str(shots / "prefect-flow-run.png"))

    page.get_by_text("Task Runs", exact=True).click()
    page.get_by_text("stage-1-3L", exact=True).last.wait_for()
    lines = _lines(page)
    for name in STAGES:  # each listed task run: its name, then its state
        rows = [i for i, line in enumerate(lines) if line == name]
        assert rows and lines[rows[-1] + 1] == "Completed", (name, lines)
    page.screenshot(path=str(shots / "prefect-task-runs.png"))

    page.get_by_text("Artifacts", exact=True).click()
    page.get_by_text("staged-smoke-versions", exact=True).wait_for()
    page.screenshot(path=str(shots / "prefect-artifacts.png"))
    summary = _artifact(servers, flow_run.id, "staged-smoke-versions")
    page.goto(f"{servers.urls['prefect']}/artifacts/artifact/{summary.id}")  # the markdown, rendered
    page.get_by_text("staged-smoke: staged training").first.wait_for()
    page.screenshot(path=str(shots / "prefect-summary.png"))
    link = page.locator("a", has_text="models:/staged-smoke/3")  # from the summary to the registry
    page.goto(link.get_attribute("href"))
    page.get_by_text("stage-3", exact=False).first.wait_for()
    assert page.url.endswith("#/models/staged-smoke/versions/3")


def test_prefect_names_the_flow_run_after_the_pipeline(deployed_run, page):
    servers, flow_run = deployed_run
    assert re.fullmatch(r"staged-smoke-[0-9a-f]{8}", flow_run.name)
    page.goto(f"{servers.urls['prefect']}/runs/flow-run/{flow_run.id}")
    page.get_by_text(flow_run.name, exact=True).first.wait_for()
    assert "staged-smoke" in _lines(page)  # the flow-run tag, shown beside the name


def test_mlflow_model_page_shows_three_versions_with_their_aliases(deployed_run, page, shots):
    servers, _ = deployed_run
    page.goto(f"{servers.urls['mlflow']}/#/models/staged-smoke")
    page.get_by_text("Version 3", exact=True).wait_for()
    if (close := page.get_by_role("button", name="Close")).count():  # the assistant side panel
        close.first.click()
    lines = _lines(page)
    assert {"Version 1", "Version 2", "Version 3"} <= set(lines)
    aliases = {line.removeprefix("@").strip() for line in lines if line.startswith("@")}
    assert {"stage-1", "stage-2", "stage-3", "champion"} <= aliases, lines
    page.screenshot(path=str(shots / "mlflow-model-versions.png"))
