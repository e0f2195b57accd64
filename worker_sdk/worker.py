"""`Worker`: declare skills with `@worker.task(...)`, then `worker.run()`.

Who owns what: `start()` creates one supervisor per orchestrator (registration, heartbeats,
probing), the router's poll loops (a poll may bring several tasks, each in its own slot),
one task per running handler and one per result on its way back, plus, while results are
being sent, one sender per orchestrator that carries them in batches; `stop()` ends each of
them in that order, and nothing outlives it.

Shutdown (`stop()`, or SIGTERM/SIGINT under `run()`): no new poll starts (a poll already
open is allowed to finish, at most WORKER_POLL_TIMEOUT, and the tasks it brings run like the
others: an orchestrator does not notice a closed poll and could lease tasks to it); running
handlers get WORKER_SHUTDOWN_TIMEOUT seconds to finish, then are cancelled and reported
`cancelled`; results are then delivered for up to `result_drain_timeout` seconds;
heartbeats continue until that point, so no orchestrator takes the worker for dead
meanwhile. A second signal cancels the running handlers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import platform
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from worker_sdk.config import WorkerConfig
from worker_sdk.connection import Connection
from worker_sdk.context import TaskContext
from worker_sdk.delivery import Delivery
from worker_sdk.errors import ConfigError, WorkerError
from worker_sdk.execution import Executor, Handler, Skill, make_skill
from worker_sdk.outcome import result_body
from worker_sdk.paths import task_folder_name
from worker_sdk.routing import Router, SlotGate
from worker_sdk.supervisor import Supervisor
from worker_sdk.tracing import configure_from_env

if TYPE_CHECKING:
    from worker_sdk.s3 import PayloadStore

log = logging.getLogger("worker_sdk")

H = TypeVar("H", bound=Handler)


@dataclasses.dataclass(eq=False)
class _Running:
    handler: asyncio.Task[dict[str, Any]]
    context: TaskContext


@dataclasses.dataclass(eq=False)
class _Session:
    """Everything one `start()` creates and the matching `stop()` ends."""

    payloads: PayloadStore | None  # S3 offloading, when configured
    connections: list[Connection]  # one per orchestrator, opened
    gate: SlotGate  # slots: at most max_concurrent_tasks handlers (or polls for them)
    executor: Executor  # runs a handler: input checks, payload in and out, outcome
    delivery: Delivery  # results and progress on their way back, retried
    # set by stop(): no new poll starts
    stopping: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    # handlers running now, by task id
    running: dict[str, _Running] = dataclasses.field(default_factory=dict)
    # task id -> its task, from arrival until its result is handed to delivery
    processing: dict[str, asyncio.Task[None]] = dataclasses.field(default_factory=dict)
    # tasks' payload folders, removed after their result (or at stop)
    task_dirs: set[Path] = dataclasses.field(default_factory=set)
    # one per connection: registration, heartbeats, probing
    supervisors: list[Supervisor] = dataclasses.field(default_factory=list)
    # the supervisors' running loops
    supervising: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    # the router's poll loops, once started
    polling: asyncio.Task[None] | None = None


class Worker:
    """A worker process: its skills, its configuration, and everything it runs."""

    def __init__(
        self,
        config: WorkerConfig | None = None,
        *,
        worker_type: str | None = None,
        max_concurrent_tasks: int | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """`config` wins over the environment (`environ`, default os.environ), which is
        read by `start()`, so that a bad variable is reported when the worker starts."""
        self._given = config  # the configuration to use instead of the environment
        self._environ = environ  # the environment to read (None: os.environ)
        # keyword arguments that win over both
        self._overrides: dict[str, Any] = {}
        if worker_type is not None:
            self._overrides["worker_type"] = worker_type
        if max_concurrent_tasks is not None:
            self._overrides["max_concurrent_tasks"] = max_concurrent_tasks
        self.skills: dict[str, Skill] = {}  # task type -> its handler, as declared
        self.config: WorkerConfig | None = None  # the configuration in use, once started
        self._started = False  # between start() and stop()
        self._crashed = False  # a background loop crashed (a bug): run() exits 1
        self._stop_requested = asyncio.Event()  # run() stops when set (signal or crash)
        self._hurry = asyncio.Event()  # a second signal: cancel the running handlers now
        self._session: _Session | None = None  # what start() created, kept after stop()

    def configure(self, config: WorkerConfig) -> None:
        """Use `config` instead of the environment (before `start()`)."""
        if self._started:
            raise WorkerError("configure() must come before start()")
        self._given = config

    # -- declaring skills --------------------------------------------------------------------

    def task(self, name: str, *, input_schema: Mapping[str, Any] | None = None) -> Callable[[H], H]:
        """Declare the handler of task type `name`: `(params, ctx) -> dict | Result`.

        `input_schema` (a JSON Schema; needs the jsonschema package) is sent with the
        registration and checked before the handler runs: a mismatch fails the task with
        INVALID_INPUT_ERROR listing every problem."""

        def register(handler: H) -> H:
            if name in self.skills:
                raise WorkerError(f"skill {name!r} is declared twice")
            self.skills[name] = make_skill(name, handler, input_schema)
            return handler

        return register

    # -- running: blocking -------------------------------------------------------------------

    def run(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully and return (exit 0).

        A configuration problem is printed, one line per problem, and exits with status 2;
        a crash of the worker's own machinery (a bug) shuts down and exits with status 1."""
        _setup_logging()
        try:
            _run(self._main())
        except ConfigError as exc:
            for line in str(exc).splitlines():
                print(f"worker: configuration error: {line}", file=sys.stderr)
            raise SystemExit(2) from None
        if self._crashed:
            raise SystemExit(1)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        await self.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            await self._stop_requested.wait()
        finally:
            await self.stop()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stop_requested.is_set():
            log.warning("%s again: cancelling the running tasks now", name)
            self._hurry.set()
            return
        log.info(
            "%s: shutting down (running tasks get %gs to finish)",
            name,
            self.config.shutdown_timeout if self.config else 0,
        )
        self._stop_requested.set()

    # -- running: embedded -------------------------------------------------------------------

    async def start(self) -> None:
        """Read the configuration and start working (returns once everything is started)."""
        if self._started:
            raise WorkerError("the worker is already started")
        config = self._given or WorkerConfig.from_env(self._environ)
        config = dataclasses.replace(config, **self._overrides)
        if not self.skills:
            raise WorkerError("no skills: declare at least one with @worker.task(name)")
        try:
            config.payload_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"WORKER_PAYLOAD_DIR: cannot create {config.payload_dir}: {exc.strerror}"
            ) from None
        self.config = config
        configure_from_env(self._environ)  # OpenTelemetry, when installed and asked for
        payloads: PayloadStore | None = None
        if config.s3 is not None:
            from worker_sdk.s3 import PayloadStore  # aioboto3 is needed only with S3 on

            payloads = PayloadStore(config.s3, config.payload_dir)
            await payloads.open()
        connections = [
            Connection(o, config.worker_id, config.request_timeout) for o in config.orchestrators
        ]
        for connection in connections:
            await connection.open()
        session = self._session = _Session(
            payloads=payloads,
            connections=connections,
            gate=SlotGate(config.max_concurrent_tasks),
            executor=Executor(config.worker_id, self.skills, payloads),
            delivery=Delivery(
                config.worker_id,
                connections,
                config.result_retry_initial,
                config.result_retry_max,
                values=payloads,
            ),
        )
        session.supervisors = [
            Supervisor(config, c, self._registration, self._heartbeat, self.cancel)
            for c in connections
        ]
        session.supervising = [
            asyncio.create_task(s.run(), name=f"supervisor {s.connection.url}")
            for s in session.supervisors
        ]
        router = Router(
            config, connections, session.gate, self._skill_names, self._take, session.stopping
        )
        session.polling = asyncio.create_task(router.run(), name="poll loops")
        for task in (*session.supervising, session.polling):
            task.add_done_callback(self._report_crash)
        self._started = True
        log.info(
            "worker %r started: %d skill(s), up to %d at once, %s over %s",
            config.worker_id,
            len(self.skills),
            config.max_concurrent_tasks,
            config.mode,
            ", ".join(c.url for c in connections),
        )

    async def stop(self, grace: float | None = None) -> None:
        """Shut down gracefully (see the module doc); `grace` overrides
        WORKER_SHUTDOWN_TIMEOUT. Safe to call more than once."""
        if not self._started:
            return
        self._started = False
        config = self._config()
        session = self._live()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (config.shutdown_timeout if grace is None else grace)
        session.stopping.set()
        # An open poll is allowed to finish (its client timeout bounds it): closing it early
        # would not stop the orchestrator from leasing a task to it, and that task would
        # wait for its lease to expire. The tasks it brings run, or are cancelled at the
        # deadline like the others. Only a second signal abandons it.
        if session.polling is not None:
            await self._until(None, [session.polling])
            session.polling.cancel()
            await asyncio.gather(session.polling, return_exceptions=True)
        await self._until(deadline, [r.handler for r in session.running.values()])
        for task_id in list(session.running):
            self._cancel_one(task_id, "shutdown")
        await asyncio.gather(*session.processing.values(), return_exceptions=True)
        left = await session.delivery.drain(config.result_drain_timeout)
        if left:
            log.error(
                "results of %d task(s) not delivered before shutdown: %s; their orchestrator "
                "will time them out and retry them",
                len(left),
                ", ".join(left),
            )
        goodbye = {**self._heartbeat(), "status": "offline", "supported_skills": []}
        await asyncio.gather(*(s.goodbye(goodbye) for s in session.supervisors))
        for task in session.supervising:
            task.cancel()
        await asyncio.gather(*session.supervising, return_exceptions=True)
        for connection in session.connections:
            await connection.close()
        if session.payloads is not None:
            await session.payloads.close()
        for folder in list(session.task_dirs):
            await asyncio.to_thread(shutil.rmtree, folder, True)
        log.info("worker %r stopped", config.worker_id)

    async def _until(self, deadline: float | None, tasks: list[asyncio.Task[Any]]) -> None:
        """Wait for `tasks` until `deadline` (loop time), or until a second signal says hurry."""
        if not tasks:
            return
        # asyncio.wait, unlike gather, does not cancel `tasks` when it is cancelled itself.
        everything = asyncio.ensure_future(asyncio.wait(tasks))
        hurry = asyncio.ensure_future(self._hurry.wait())
        timeout = None
        if deadline is not None:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            await asyncio.wait([everything, hurry], timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            everything.cancel()
            hurry.cancel()
            await asyncio.gather(everything, hurry, return_exceptions=True)

    def _report_crash(self, task: asyncio.Task[Any]) -> None:
        """A background loop only ends by cancellation; if one crashed (a bug), stop the
        worker so that its process manager can restart it, rather than run half dead."""
        if task.cancelled() or task.exception() is None:
            return
        log.critical("%s crashed; stopping the worker", task.get_name(), exc_info=task.exception())
        self._crashed = True
        self._stop_requested.set()

    # -- state -------------------------------------------------------------------------------

    def _config(self) -> WorkerConfig:
        if self.config is None:
            raise WorkerError("the worker is not started")
        return self.config

    def _live(self) -> _Session:
        if self._session is None:
            raise WorkerError("the worker is not started")
        return self._session

    @property
    def task_ids(self) -> list[str]:
        """Tasks this worker holds: running, or with a result still on its way."""
        session = self._live()
        return sorted({*session.processing, *session.delivery.pending_task_ids})

    def _skill_names(self) -> list[str]:
        return sorted(self.skills)

    def _registration(self) -> dict[str, Any]:
        config = self._config()
        return {
            "worker_id": config.worker_id,
            "worker_type": config.worker_type,
            "supported_skills": [self.skills[name].registration() for name in sorted(self.skills)],
            "available_skills": self._skill_names(),
            "capabilities": {
                "hostname": socket.gethostname(),
                "extra": {"websockets": False, "sdk": "interlock-worker-sdk"},
            },
            "resources": {"properties": {"max_concurrent_tasks": config.max_concurrent_tasks}},
            "installed_software": {"python": platform.python_version()},
            "timestamp": int(time.time()),
        }

    def _heartbeat(self) -> dict[str, Any]:
        session = self._live()
        config = self._config()
        return {
            "worker_id": config.worker_id,
            # Running tasks, not slots: an open poll holds slots for the tasks it may bring.
            "status": "idle" if len(session.processing) < config.max_concurrent_tasks else "full",
            "current_tasks": self.task_ids,
            "available_skills": self._skill_names(),
            "timestamp": int(time.time()),
        }

    # -- tasks -------------------------------------------------------------------------------

    def _take(self, connection: Connection, task: dict[str, Any]) -> bool:
        """Start a task a poll brought; True when it now owns the poll's slot."""
        session = self._live()
        job_id, task_id = task.get("job_id"), task.get("task_id")
        if not isinstance(job_id, str) or not isinstance(task_id, str) or not job_id or not task_id:
            log.error(
                "orchestrator %s sent a task without string job_id and task_id: %.300s; dropped",
                connection.url,
                task,
            )
            return False
        if task_id in session.processing or task_id in session.delivery.pending_task_ids:
            log.warning("task %s arrived again while this worker still holds it; ignored", task_id)
            return False
        folder = self._config().payload_dir / task_folder_name(task_id)
        session.task_dirs.add(folder)
        progress = functools.partial(session.delivery.progress, connection, job_id, task_id)
        context = TaskContext(task, connection.url, folder, progress)
        log.debug("task %s (%s) from %s", task_id, context.task_type, connection.url)
        session.processing[task_id] = asyncio.create_task(
            self._process(connection, task, context), name=f"task {task_id}"
        )
        return True

    async def _process(
        self, connection: Connection, task: dict[str, Any], context: TaskContext
    ) -> None:
        session = self._live()
        task_id = context.task_id
        started = time.monotonic()
        handler = asyncio.create_task(session.executor.run(task, context))
        session.running[task_id] = _Running(handler, context)
        try:
            try:
                body = await handler
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the worker itself is being torn down
                seconds = time.monotonic() - started
                body = result_body(task, self._config().worker_id, "cancelled", seconds=seconds)
        finally:
            session.running.pop(task_id, None)
            session.processing.pop(task_id, None)
            session.gate.release(1, connection.url)
        # No await since the task left `processing`: heartbeats always list it somewhere.
        session.delivery.submit(connection, body, functools.partial(self._cleanup, context))

    async def _cleanup(self, context: TaskContext) -> None:
        session = self._live()
        folder = self._config().payload_dir / task_folder_name(context.task_id)
        session.task_dirs.discard(folder)
        if folder.exists():  # most tasks never create theirs: skip the thread hop
            await asyncio.to_thread(shutil.rmtree, folder, True)

    def cancel(self, task_ids: list[str]) -> None:
        """Cancel running tasks (as the orchestrator asks in a heartbeat answer)."""
        for task_id in task_ids:
            self._cancel_one(task_id, "the orchestrator asked")

    def _cancel_one(self, task_id: str, why: str) -> None:
        session = self._live()
        running = session.running.get(task_id)
        if running is None:
            log.debug("cancel of task %s (%s): not running here", task_id, why)
            return
        log.info("cancelling task %s: %s", task_id, why)
        running.context.mark_cancelled()
        running.handler.cancel()


def _run(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run on uvloop when it is installed (`interlock[worker]` installs it): polls
    and results then cost about half the CPU. INTERLOCK_EVENT_LOOP=asyncio opts out."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if os.environ.get("INTERLOCK_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def _setup_logging() -> None:
    """Log to stderr at LOG_LEVEL (default INFO) unless the application configured logging."""
    root = logging.getLogger()
    if root.handlers:
        return
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level if level in logging.getLevelNamesMapping() else "INFO",
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
