"""Blueprint language: load YAML, validate, compile to a graph, export DOT."""

from engine.blueprint.loader import (
    BlueprintSet,
    load_blueprint,
    load_blueprint_text,
    load_blueprints,
    validate_paths,
)
from engine.blueprint.model import Blueprint

__all__ = [
    "Blueprint",
    "BlueprintSet",
    "load_blueprint",
    "load_blueprint_text",
    "load_blueprints",
    "validate_paths",
]
