"""One admitted mirror: what the live handler hands the shadow task, and the
bytes it holds for comparison against the shared budget.

The task starts once the live exchange has ended (``ShadowJob.start``), so both
of its inputs are known by then: it never waits on the client's clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from multidict import CIMultiDict

from proxy.capture import BodyCapture, CaptureBudget
from proxy.routes import CompiledRoute
from proxy.routing import RouteRuntime
from proxy.tracecontext import TraceContext
from proxy.types import Observation, ShadowOutcome


@dataclass(slots=True)
class ShadowJob:
    """One admitted mirror; the live handler fills in ``body`` and ``live``."""

    route: CompiledRoute
    method: str
    raw_path: str
    headers: CIMultiDict[str]  # the agent's copy (shadow marker, add/drop headers)
    # The request as legacy got it, kept only when it is recorded or resent for noise.
    legacy_headers: CIMultiDict[str] | None
    request_id: str
    trace: TraceContext  # the request's trace; the agent call gets its own span id
    budget: CaptureBudget
    body: bytes | ShadowOutcome | None = None  # the captured request body, or why not
    live: Observation | None = None  # legacy's answer (or why there is none)
    launch: Callable[[ShadowJob], None] | None = None  # starts its task; None once started
    runtime: RouteRuntime | None = None  # the route's breaker and evidence window
    held: int = 0  # bytes taken from the budget, given back when the job ends
    reserved: float | None = None  # tokens reserved from the route's budget, until settled
    starved: bool = False  # the budget refused a capture
    ended: bool = False  # its task is done: nothing more is held for it

    def start(self) -> None:
        """Start the job's task, once: when the live exchange has ended, or as
        soon as its outcome is known (an answer too large to compare)."""
        launch, self.launch = self.launch, None
        if launch is not None:
            launch(self)

    def hold(self, size: int) -> bool:
        """Take ``size`` bytes of the shared capture budget for this job."""
        if self.ended:  # no one would give them back
            return False
        if self.budget.take(size):
            self.held += size
            return True
        self.starved = True
        return False

    def release(self, size: int) -> None:
        """Give back bytes of a copy that was dropped before the job ended."""
        if not self.ended:  # else they went back with the rest when it ended
            self.budget.give(size)
            self.held -= size

    def capture(self) -> BodyCapture:
        """A bounded copy of one of this job's bodies, held against the budget."""
        return BodyCapture(self.route.capture_limit, self.hold, self.release)

    def too_large(self) -> ShadowOutcome:
        """Why a body could not be kept: its own size, or the memory bound."""
        return ShadowOutcome.DROPPED_MEMORY if self.starved else ShadowOutcome.SKIPPED_SIZE
