"""Compiled blueprints by name, API endpoint and content hash.

A job pins the content hash of the blueprint it started with. Blueprints are saved in the
store by hash, so any orchestrator (or this one after the YAML changed) can still run a job
whose version is no longer in the blueprint folder.
"""

from __future__ import annotations

from engine.blueprint.compiler import compile_source
from engine.blueprint.loader import BlueprintSet
from engine.blueprint.model import Blueprint
from engine.blueprint.yamlsource import Source
from engine.runtime.jobdoc import RuntimeSettings
from engine.runtime.machine import Machine
from engine.store.client import Store


class UnknownBlueprintVersion(LookupError):
    """A job names a blueprint hash that neither this process nor the store knows."""


class Registry:
    def __init__(self, blueprints: BlueprintSet, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.by_name = dict(blueprints.blueprints)
        self.by_endpoint = blueprints.by_endpoint()
        self._machines: dict[str, Machine] = {
            bp.content_hash: Machine(bp, settings) for bp in blueprints
        }

    async def publish(self, store: Store) -> None:
        """Save every loaded blueprint by hash so other orchestrators can run its jobs."""
        for blueprint in self.by_name.values():
            await store.save_blueprint(blueprint.content_hash, dict(blueprint.raw))

    async def machine(self, content_hash: str, store: Store) -> Machine:
        machine = self._machines.get(content_hash)
        if machine is not None:
            return machine
        raw = await store.load_blueprint(content_hash)
        if raw is None:
            raise UnknownBlueprintVersion(content_hash)
        blueprint, _ = compile_source(Source(f"<stored {content_hash[:12]}>", raw))
        if blueprint is None:
            raise UnknownBlueprintVersion(content_hash)
        machine = Machine(blueprint, self.settings)
        self._machines[content_hash] = machine
        return machine

    def current(self, name: str) -> Blueprint | None:
        return self.by_name.get(name)
