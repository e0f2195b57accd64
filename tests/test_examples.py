"""Every example blueprint validates, compiles to the expected shape and renders cleanly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import networkx as nx
import pytest

from engine.blueprint.dot import to_dot
from engine.blueprint.loader import load_blueprint, load_blueprints, validate_paths
from engine.blueprint.model import ChoiceState, EndState, ParallelState, TaskSpec, TaskState
from tests.conftest import BLUEPRINTS

EXAMPLES = sorted(BLUEPRINTS.glob("*.yaml"))


def test_the_examples_folder_validates_without_problems() -> None:
    blueprints, problems = validate_paths([BLUEPRINTS])
    assert [str(p) for p in problems] == []
    assert len(blueprints) == len(EXAMPLES) >= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_declares_the_editor_schema(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/blueprint.schema.json"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_renders_with_graphviz_without_warnings(path: Path, dot_program: str) -> None:
    dot = to_dot(load_blueprint(path))
    run = subprocess.run(
        [dot_program, "-Tsvg"], input=dot.encode(), capture_output=True, check=False, timeout=60
    )
    assert run.returncode == 0, run.stderr.decode()
    assert run.stderr.decode() == ""
    assert b"<svg" in run.stdout


def test_order_processing_compiles_to_the_documented_graph() -> None:
    bp = load_blueprints([BLUEPRINTS]).blueprints["order_processing"]
    assert bp.version == 3
    assert bp.api_endpoint == "jobs/process_order"
    assert bp.start == "check_inventory"
    check = bp.states["check_inventory"]
    assert isinstance(check, TaskState)
    assert check.spec is not None
    assert check.spec.task_type == "check_inventory"
    assert {t.trigger: t.target for t in check.transitions} == {
        "success": "route",
        "out_of_stock": "no_stock",
        "failure": "broken",
    }
    route = bp.states["route"]
    assert isinstance(route, ChoiceState)
    assert route.otherwise == "standard"
    assert [rule.goto for rule in route.rules] == ["express", "bulk_discount"]
    assert route.rules[0].when.truthy({"initial_data": {"priority": "express"}})
    assert not route.rules[0].when.truthy({"initial_data": {"priority": "standard"}})
    assert isinstance(bp.states["no_stock"], EndState)
    assert nx.is_frozen(bp.graph)
    assert set(bp.graph.successors("check_inventory")) == {"route", "no_stock", "broken"}


def test_params_templates_render_against_a_job_context() -> None:
    bp = load_blueprints([BLUEPRINTS]).blueprints["image_pipeline"]
    resize = bp.states["resize"]
    assert isinstance(resize, TaskState)
    assert resize.spec is not None
    context = {"initial_data": {"url": "u"}, "steps": {"fetch": {"path": "/tmp/a.png"}}}
    assert resize.spec.params.render(context) == {"path": "/tmp/a.png", "width": 256}
    publish = bp.states["publish"]
    assert isinstance(publish, TaskState)
    assert publish.spec is not None
    rendered = publish.spec.params.render({"job": {"id": "j1"}, "steps": {"resize": {"path": "p"}}})
    assert rendered == {"path": "p", "name": "thumb-j1.png"}


def test_parallel_for_each_and_retry_policy_are_compiled() -> None:
    bp = load_blueprints([BLUEPRINTS]).blueprints["batch_thumbnails"]
    fan = bp.states["resize_all"]
    assert isinstance(fan, ParallelState)
    assert fan.for_each is not None
    assert fan.for_each.search({"initial_data": {"images": ["a", "b"]}}) == ["a", "b"]
    assert isinstance(fan.item_spec, TaskSpec)
    assert fan.item_spec.params.render({"item": "a", "index": 0}) == {
        "url": "a",
        "position": 0,
        "width": 128,
    }
    assert fan.item_spec.retry.initial == 0.5
    assert fan.max_concurrency == 20
    assert fan.on_branch_failure == "collect"


def test_content_hash_ignores_comments_but_not_content(tmp_path: Path) -> None:
    source = (BLUEPRINTS / "wait_and_set.yaml").read_text()
    original = load_blueprint(BLUEPRINTS / "wait_and_set.yaml")
    commented = tmp_path / "a.yaml"
    commented.write_text("# another comment\n" + source)
    changed = tmp_path / "b.yaml"
    changed.write_text(source.replace("wait: 2s", "wait: 3s"))
    assert load_blueprint(commented).content_hash == original.content_hash
    assert load_blueprint(changed).content_hash != original.content_hash
