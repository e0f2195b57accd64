"""Skills (the handlers a worker serves) and running one task from params to result body.

Steps, each failure becoming a `failure` result with the code of `outcome.py`: fetch
`s3://` params (S3 on), check `input_schema` (if given), call the handler (a sync one in a
thread), check the returned value, upload result files (S3 on).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker_sdk.context import TaskContext
from worker_sdk.errors import InvalidInputError, PermanentError, WorkerError
from worker_sdk.outcome import error_of, from_return, result_body
from worker_sdk.tracing import handler_span

if TYPE_CHECKING:
    from worker_sdk.s3 import PayloadStore

log = logging.getLogger("worker_sdk")

Handler = Callable[[dict[str, Any], TaskContext], Any]
SKILL_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_PROBLEMS = 20


@dataclass(frozen=True, slots=True)
class Skill:
    name: str
    handler: Handler
    is_async: bool
    input_schema: Mapping[str, Any] | None = None
    validator: Any = None  # a jsonschema validator, built when the skill is declared

    def registration(self) -> dict[str, Any]:
        """This skill's entry in `supported_skills`."""
        entry: dict[str, Any] = {"name": self.name, "type": self.name}
        if self.input_schema is not None:
            entry["input_schema"] = dict(self.input_schema)
        return entry


def make_skill(name: str, handler: Handler, input_schema: Mapping[str, Any] | None) -> Skill:
    """Check a declaration; raises WorkerError naming the skill at fault."""
    if not isinstance(name, str) or not SKILL_NAME.match(name):
        raise WorkerError(
            f"skill name {name!r}: use 1 to 128 letters, digits, _ . : or - (the task type)"
        )
    if not callable(handler):
        raise WorkerError(f"skill {name!r}: the handler must be a function (params, ctx)")
    validator = None
    if input_schema is not None:
        validator = _validator(name, input_schema)
    return Skill(name, handler, _is_async(handler), input_schema, validator)


def _is_async(handler: Handler) -> bool:
    target: Any = handler
    while isinstance(target, functools.partial):
        target = target.func
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def _validator(name: str, schema: Mapping[str, Any]) -> Any:
    try:
        import jsonschema  # only needed by skills that declare an input_schema
    except ImportError:
        raise WorkerError(
            f"skill {name!r}: input_schema needs the jsonschema package; "
            "install it with pip install 'interlock[worker]'"
        ) from None
    if not isinstance(schema, Mapping):
        raise WorkerError(f"skill {name!r}: input_schema must be a JSON Schema object (a dict)")
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        raise WorkerError(
            f"skill {name!r}: input_schema is not a valid JSON Schema: "
            f"{exc.json_path}: {exc.message}"
        ) from None
    return cls(dict(schema))


def check_params(skill: Skill, params: Any) -> None:
    """Raises InvalidInputError listing every way `params` breaks the input_schema."""
    if skill.validator is None:
        return
    problems = sorted(skill.validator.iter_errors(params), key=lambda e: list(e.path))
    if problems:
        details = [f"{e.json_path}: {e.message}" for e in problems[:MAX_PROBLEMS]]
        raise InvalidInputError(
            f"params do not match the input_schema of {skill.name!r}: {details[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            details,
        )


class Executor:
    """Runs tasks for one worker; `run` never raises except CancelledError."""

    def __init__(
        self, worker_id: str, skills: Mapping[str, Skill], payloads: PayloadStore | None
    ) -> None:
        self.worker_id = worker_id
        self.skills = skills
        self.payloads = payloads

    async def run(self, task: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
        """The result body for `task`."""
        started = time.monotonic()
        try:
            with handler_span(task, self.worker_id):  # continues the job's trace, if any
                result = await self._outcome(task, ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is a result; see outcome.py for the codes
            error = error_of(exc)
            if not isinstance(exc, WorkerError):
                log.warning(
                    "task %s (%s) raised %s",
                    ctx.task_id,
                    ctx.task_type,
                    error["message"],
                    exc_info=exc,
                )
            else:
                log.info(
                    "task %s (%s) failed: %s %s",
                    ctx.task_id,
                    ctx.task_type,
                    error["code"],
                    error["message"],
                )
            seconds = time.monotonic() - started
            return result_body(task, self.worker_id, "failure", error=error, seconds=seconds)
        seconds = time.monotonic() - started
        return result_body(task, self.worker_id, result[0], data=result[1], seconds=seconds)

    async def _outcome(
        self, task: Mapping[str, Any], ctx: TaskContext
    ) -> tuple[str, Mapping[str, Any]]:
        skill = self.skills.get(ctx.task_type)
        if skill is None:
            raise PermanentError(
                f"Unsupported skill: {ctx.task_type!r}; this worker serves "
                f"{', '.join(sorted(self.skills)) or 'nothing'}"
            )
        params = task.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidInputError(f"params must be an object, not {type(params).__name__}")
        if self.payloads is not None:
            params = await self.payloads.download_params(params, ctx.payload_dir)
        check_params(skill, params)
        if skill.is_async:
            value = await skill.handler(params, ctx)
        else:
            value = await asyncio.to_thread(skill.handler, params, ctx)
            if inspect.isawaitable(value):  # a plain function that returned a coroutine
                value = await value
        result = from_return(value)
        data: Mapping[str, Any] = result.data
        if self.payloads is not None:
            # Only the task's own folder: another task's inputs stay where they are.
            data = await self.payloads.upload_result(dict(data), ctx.job_id, ctx.payload_dir)
        return result.status, data
