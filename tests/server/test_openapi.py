"""The OpenAPI document: valid OpenAPI 3.1, in step with the router, and true of a live
server as schemathesis sees it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

from aiohttp import web
from openapi_spec_validator import validate

from engine.runtime.orchestrator import Orchestrator
from server.app import build_app_around
from server.config import Settings
from tests.server.helpers import Client, ok_json
from tests.support.processes import CLIENT_TOKEN, WORKER_TOKEN, serve

SCHEMATHESIS_WORKER = "st-worker"
# Checks that an answer is what the document says: status, media type, headers, body.
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,unsupported_method"
)


def routes(app: web.Application, prefix: str = "") -> set[tuple[str, str]]:
    """Every (method, path template) the app and its sub-applications route, HEAD aside."""
    found: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        sub = getattr(resource, "_app", None)
        if isinstance(sub, web.Application):
            found |= routes(sub)
            continue
        for route in resource:
            if route.method not in ("HEAD", "*"):
                found.add((route.method, resource.canonical))
    return found


async def test_every_route_is_in_the_document_and_every_operation_is_routed(
    api: Client, orchestrator: Orchestrator, settings: Settings
) -> None:
    # Given the document a server serves, without a token
    doc = await ok_json(await api.get("/api/v1/openapi.json"))
    validate(doc)  # a valid OpenAPI 3.1 document
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}

    # When the router's routes are listed (less the web console's static pages and files,
    # which are not API operations)
    console = {("GET", "/"), ("GET", "/console/{name}")}
    routed = routes(build_app_around(orchestrator, settings)) - console

    # Then both lists agree; the submission catch-all is one path per loaded blueprint
    catch_all = ("POST", "/api/v1/{api_endpoint}")
    assert catch_all in routed
    endpoints = {
        ("POST", f"/api/v1/{bp.api_endpoint}")
        for bp in orchestrator.registry.by_name.values()
        if bp.api_endpoint
    }
    assert endpoints
    assert endpoints <= documented
    assert routed - {catch_all} == documented - endpoints


async def test_errors_share_one_component_and_submissions_carry_input_schemas(
    api: Client,
) -> None:
    doc = await ok_json(await api.get("/api/v1/openapi.json"))
    error = {"$ref": "#/components/schemas/Error"}
    for response in doc["components"]["responses"].values():
        assert response["content"]["application/json"]["schema"] == error
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = [code for code in op["responses"] if code.startswith(("4", "5"))]
            assert "503" in codes, (method, path)
            for code in codes:
                assert op["responses"][code]["$ref"].endswith(f"/E{code}"), (method, path)
    charge = doc["paths"]["/api/v1/jobs/charge"]["post"]["requestBody"]["content"]
    body = charge["application/json"]["schema"]
    assert body["properties"]["initial_data"]["required"] == ["card_token", "amount"]
    assert body["required"] == ["initial_data"]


async def test_the_docs_page_is_self_contained(api: Client) -> None:
    response = await api.get("/api/docs")
    page = await response.text()
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "/api/v1/openapi.json" in page
    # Nothing fetched from elsewhere: no external script, style, font or image.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page
    assert "url(" not in page


def test_schemathesis_finds_no_failure_on_a_live_server(tmp_path: Path) -> None:
    """Every operation with a fixed seed and a bounded number of examples: no 5xx, every
    answer as documented. The JUnit report gives the counts."""
    config = tmp_path / "schemathesis.toml"
    # The worker routes take the worker's own id in the path; long polls (a worker's poll,
    # a client's ?wait= on a job it just created) answer at once.
    config.write_text(
        f'[parameters]\n"path.worker_id" = "{SCHEMATHESIS_WORKER}"\n'
        '"query.timeout" = 0\n"query.wait" = 0\n',
        encoding="utf-8",
    )
    junit = tmp_path / "junit.xml"
    with serve(tmp_path, "memory://") as server:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(config),
                "run",
                f"{server.url}/api/v1/openapi.json",
                "-H",
                f"X-Client-Token: {CLIENT_TOKEN}",
                "-H",
                f"X-Worker-Token: {WORKER_TOKEN}",
                "-H",
                f"X-Worker-ID: {SCHEMATHESIS_WORKER}",
                "--checks",
                CHECKS,
                "--seed",
                "20261202",
                "--max-examples",
                "8",
                "--phases",
                "examples,coverage,fuzzing",
                "--mode",
                "positive",
                "--generation-database",
                "none",
                "--no-color",
                "--workers",
                "1",
                "--request-timeout",
                "10",
                "--report",
                "junit",
                "--report-junit-path",
                str(junit),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=tmp_path,  # its cache folder goes there
            env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
        )
        alive = server.alive()
    summary = run.stdout[-6000:]
    assert run.returncode == 0, summary
    assert alive, "the server died during the run"
    suite = ElementTree.parse(junit).getroot()
    cases = suite.findall(".//testcase")
    failures = [c.get("name") for c in cases if c.find("failure") is not None]
    assert len(cases) >= 30, summary  # every documented operation was tested
    assert failures == [], summary
    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated, summary
    examples = int(generated.group(1))
    assert examples >= len(cases), summary
    print(json.dumps({"operations": len(cases), "examples": examples, "failures": len(failures)}))
