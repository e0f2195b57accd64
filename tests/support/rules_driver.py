"""A synchronous, pure driver for the transition rules: a job, its tasks and a fake clock.

`RulesDriver` runs one job of a compiled blueprint through `Machine` and keeps what the store
would keep from each returned `Effects`: the job document, the leases (as `TaskLease`), the
queued task payloads in queue order, the history, the cancel requests sent to workers, and the
subflow children (each child runs in a driver of its own). A test plays the outside world:

    job = RulesDriver(load_blueprint_text(TEXT), {"n": 1})
    task = job.lease("w1")                  # a worker takes the first queued task
    job.result(task, data={"ok": True})     # ... and sends its result
    job.fire_due(job.now + 30_000)          # time passes: whatever falls due runs
    assert job.doc["status"] == "finished"

Nothing here sleeps, touches Redis or reads the wall clock: `now` only moves when the test
moves it, and randomness comes from a seeded `random.Random`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from engine.blueprint.model import Blueprint
from engine.runtime.jobdoc import (
    TERMINAL,
    BranchData,
    Effects,
    Enqueue,
    Ignored,
    RuntimeSettings,
    TaskLease,
    new_job,
)
from engine.runtime.machine import Machine

# A job whose timers keep falling due inside one `fire_due` call this often is looping.
MAX_TIMER_ROUNDS = 10_000


class RulesDriver:
    """One job, driven by hand. Every attribute is what the store would hold for it."""

    def __init__(
        self,
        blueprint: Blueprint,
        initial_data: Any = None,
        *,
        now: int = 1_000_000,
        seed: int = 1,
        settings: RuntimeSettings | None = None,
        blueprints: Mapping[str, Blueprint] | None = None,
        job_id: str = "job",
        client: str = "c",
        parent: Any = None,  # a ParentRef: {"job_id", "state", "depth"}
        start: bool = True,
        **options: Any,
    ) -> None:
        self.settings = settings or RuntimeSettings()
        self.machine = Machine(blueprint, self.settings)  # the rules under test
        self.now = now  # the fake clock, in ms; only the test moves it
        self.rng = random.Random(seed)  # seeded: retries' jitter and ids are reproducible
        self.blueprints = dict(blueprints or {})  # what subflow children may run
        self.doc: Any = new_job(
            job_id=job_id,
            blueprint=blueprint,
            client=client,
            initial_data={} if initial_data is None else initial_data,
            now=now,
            parent=parent,
            **options,
        )  # the job document as committed
        self.leases: dict[str, TaskLease] = {}  # task id -> queued or leased to a worker
        self.queue: list[Enqueue] = []  # queued tasks, in the order a worker would get them
        self.payloads: dict[str, dict[str, Any]] = {}  # task id -> what the worker receives
        # A parallel state's stored items and results by branch (job hash fields i:, r:)
        self.branch_items: dict[int, Any] = {}
        self.branch_results: dict[int, Any] = {}
        self.history: list[dict[str, Any]] = []  # every history event, in commit order
        self.alive: dict[str, dict[str, Any] | None] = {}  # worker -> last heartbeat, or gone
        self.cancel_requests: list[tuple[str, str]] = []  # (worker, task id) told to stop
        self.children: dict[str, RulesDriver] = {}  # subflow child id -> its driver
        self.ignored: list[str] = []  # reasons of every Ignored answer, in order
        self.commits = 0  # effects applied so far
        self.notify: RulesDriver | None = None  # the parent driver, for a subflow child
        if start:
            self.apply(self.machine.start(self.doc, self.now, self.rng))

    # -- what the store does with a transition's effects --------------------------------------

    def apply(self, outcome: Effects | Ignored | None) -> Effects | Ignored | None:
        """Commit `outcome` as the orchestrator would; returns it unchanged."""
        if outcome is None:
            return None
        if isinstance(outcome, Ignored):
            self.ignored.append(outcome.reason)
            return outcome
        fx = outcome
        self.commits += 1
        self.doc["updated_at"] = self.now
        self.doc["hseq"] += len(fx.history)
        self.history.extend(fx.history)
        for task_id in fx.dropped:
            self.leases.pop(task_id, None)
        removed = {member for _, member in fx.dequeue}
        self.queue = [e for e in self.queue if e.member not in removed]
        for enqueue in fx.enqueue:
            self.leases[enqueue.task_id] = TaskLease("queued", enqueue.lease_ms)
            self.payloads[enqueue.task_id] = enqueue.payload
            self.queue.append(enqueue)
        self.queue.sort(key=lambda e: e.score)  # stable: equal scores keep their order
        self.cancel_requests.extend(fx.cancel_on_worker)
        for n in range(fx.drop_branches):
            self.branch_items.pop(n, None)
            self.branch_results.pop(n, None)
        self.branch_items.update(fx.branch_items)
        self.branch_results.update(fx.branch_results)
        for child in fx.children:
            self._start_child(child.job_id, child.blueprint, child.initial_data, child.parent)
        for child_id in fx.cancel_children:
            if child_id in self.children:
                self.children[child_id].cancel()
        if fx.notify_parent and self.notify is not None:
            self.notify.now = max(self.notify.now, self.now)  # the parent hears it now
            self.notify.apply(
                self.notify.machine.on_child_done(
                    self.notify.doc,
                    self.doc,
                    self.notify.now,
                    self.notify.rng,
                    self.notify.branch(),
                    dict(self.notify.leases),
                )
            )
        return fx

    def _start_child(self, child_id: str, name: str, data: Any, parent: Any) -> None:
        if child_id in self.children or name not in self.blueprints:
            return  # exists already (creating an existing id does nothing), or not loaded
        child = RulesDriver(
            self.blueprints[name],
            data,
            now=self.now,
            seed=self.rng.getrandbits(32),
            settings=self.settings,
            blueprints=self.blueprints,
            job_id=child_id,
            client=self.doc["client"],
            parent=parent,
            start=False,
        )
        child.notify = self
        self.children[child_id] = child
        child.apply(child.machine.start(child.doc, child.now, child.rng))

    def branch(self) -> BranchData:
        """Everything stored of the running parallel state, as the orchestrator reads it."""
        book = self.doc.get("parallel")
        run = book.get("run") if book else None
        return BranchData(run, self.branch_items, self.branch_results)

    # -- the outside world ----------------------------------------------------------------------

    @property
    def status(self) -> str:
        return str(self.doc["status"])

    def events(self, *names: str) -> list[dict[str, Any]]:
        """History events, only those named when names are given."""
        return [e for e in self.history if not names or e["event"] in names]

    def event_names(self) -> list[str]:
        return [e["event"] for e in self.history]

    def queued(self, task_type: str | None = None) -> list[dict[str, Any]]:
        """Payloads of the queued tasks (of one type), in the order workers would get them."""
        return [
            self.payloads[e.task_id]
            for e in self.queue
            if task_type is None or e.task_type == task_type
        ]

    def lease(
        self, worker: str, task_type: str | None = None, *, task_id: str | None = None
    ) -> dict[str, Any]:
        """Lease the first queued task (of `task_type`, or the one with `task_id`) to
        `worker`, as the dispatcher does; the worker counts as alive from now on."""
        for enqueue in self.queue:
            if (task_type is None or enqueue.task_type == task_type) and (
                task_id is None or enqueue.task_id == task_id
            ):
                self.queue.remove(enqueue)
                self.leases[enqueue.task_id] = TaskLease(
                    "leased", enqueue.lease_ms, worker, self.now
                )
                self.heartbeat(worker)
                return self.payloads[enqueue.task_id]
        raise AssertionError(f"no queued task matches {task_type=} {task_id=}: {self.queue}")

    def heartbeat(self, worker: str, tasks: list[str] | None = None) -> None:
        """The worker says it is alive now (and, when given, which tasks it holds)."""
        beat: dict[str, Any] = {"at": self.now}
        if tasks is not None:
            beat["tasks"] = tasks
        self.alive[worker] = beat

    def lose(self, worker: str) -> None:
        """The worker is gone: its heartbeat key has expired."""
        self.alive[worker] = None

    def result(
        self,
        task: dict[str, Any] | str,
        status: str = "success",
        data: Any = None,
        *,
        error: dict[str, Any] | None = None,
        worker: str | None = None,
    ) -> Effects | Ignored | None:
        """Send a worker's result for `task` (a leased payload or a task id); by default
        from the worker holding it."""
        task_id = task if isinstance(task, str) else str(task["task_id"])
        if worker is None:
            lease = self.leases.get(task_id)
            worker = lease.worker if lease is not None else "nobody"
        body: dict[str, Any] = {
            "job_id": self.doc["id"],
            "task_id": task_id,
            "status": status,
            "data": data,
            "worker_id": worker,
        }
        if error is not None:
            body["error"] = error
        return self.apply(
            self.machine.on_result(
                self.doc, dict(self.leases), body, self.now, self.rng, self.branch()
            )
        )

    def progress(self, task: dict[str, Any], payload: Any, worker: str | None = None) -> Any:
        """A progress report for `task`, by default from the worker holding it."""
        lease = self.leases.get(str(task["task_id"]))
        who = worker or (lease.worker if lease is not None else "nobody")
        return self.apply(
            self.machine.on_progress(
                self.doc, dict(self.leases), who, str(task["task_id"]), payload, self.now
            )
        )

    def release(self, task: dict[str, Any]) -> Effects | Ignored | None:
        """The worker holding `task` never received it (its poll had gone): put it back."""
        lease = self.leases.get(str(task["task_id"]))
        who = lease.worker if lease is not None else "nobody"
        return self.apply(
            self.machine.on_release(
                self.doc, dict(self.leases), who, str(task["task_id"]), self.now, self.branch()
            )
        )

    def next_due(self) -> int | None:
        return self.machine.next_due(self.doc, dict(self.leases))

    def fire_due(self, now: int, *, punctual: bool = True) -> int:
        """Move the clock to `now`, running the timer whenever something falls due on the
        way: at each due moment (a punctual timer loop), or with `punctual=False` once at
        `now` (a timer loop that ran late). Returns how many timer commits ran. Subflow
        children's timers run first."""
        assert now >= self.now, "the clock does not go back"
        for child in list(self.children.values()):
            child.fire_due(max(now, child.now), punctual=punctual)
        rounds = 0
        while (due := self.next_due()) is not None and due <= now:
            self.now = max(self.now, due) if punctual else now
            fx = self.machine.on_timer(
                self.doc,
                dict(self.leases),
                self.now,
                self.rng,
                dict(self.alive),
                self._child_doc(),
                branch=self.branch(),
                children={
                    child_id: self.children[child_id].doc if child_id in self.children else None
                    for child_id in self.machine.child_checks(self.doc, self.now)
                },
            )
            rounds += 1
            assert rounds < MAX_TIMER_ROUNDS, "the timer keeps falling due: a loop"
            if fx is None:
                break
            self.apply(fx)
            if self.next_due() == due:
                break  # nothing moved on: the store would claim it again next round
        self.now = now
        return rounds

    def _child_doc(self) -> Any:
        subflow = self.doc.get("subflow")
        if not subflow:
            return None
        child = self.children.get(subflow["child_id"])
        return child.doc if child is not None else None

    def decide(self, decision: str, by: str = "client:c") -> Effects | Ignored | None:
        return self.apply(self.machine.on_decision(self.doc, decision, self.now, self.rng, by=by))

    def send(self, name: str, payload: Any = None) -> Effects | Ignored | None:
        """A client sends the event `name` with `payload` to the job."""
        return self.apply(self.machine.on_event(self.doc, name, payload, self.now, self.rng))

    def pause(self, by: str = "client:c") -> Effects | Ignored | None:
        return self.apply(self.machine.pause(self.doc, dict(self.leases), self.now, by))

    def resume(self, by: str = "client:c") -> Effects | Ignored | None:
        return self.apply(
            self.machine.resume(self.doc, dict(self.leases), self.now, self.rng, by, self.branch())
        )

    def redrive(
        self, from_state: str | None = None, initial_data: Any = None, by: str = "client:c"
    ) -> Effects | Ignored | None:
        """Run the ended job again: from the state that failed, or from `from_state`."""
        return self.apply(
            self.machine.redrive(
                self.doc,
                dict(self.leases),
                self.now,
                self.rng,
                by,
                from_state=from_state,
                initial_data=initial_data,
            )
        )

    def cancel(self) -> Effects | Ignored | None:
        return self.apply(self.machine.cancel(self.doc, dict(self.leases), self.now))

    def child(self) -> RulesDriver:
        """The driver of the subflow child the job waits for now."""
        subflow = self.doc.get("subflow")
        assert subflow, f"job is {self.status}, not waiting for a child"
        return self.children[subflow["child_id"]]

    def branch_child(self, branch: int) -> RulesDriver:
        """The driver of the child job a parallel state's subflow branch runs now."""
        book = self.doc.get("parallel")
        entry = (book or {}).get("children", {}).get(str(branch))
        assert entry, f"branch {branch} runs no child job now"
        return self.children[entry["child_id"]]

    @property
    def ended(self) -> bool:
        return self.doc["status"] in TERMINAL
