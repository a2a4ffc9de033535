"""Every route's shadow token budget, as the shadow path uses them: kept across
reloads that leave a route's allowance alone, shown as a gauge, and logged once
when one runs out and once when it is back (pure arithmetic in budget.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog

from proxy.agentmetrics import AgentMetrics
from proxy.budget import TokenBudget
from proxy.job import ShadowJob
from proxy.routes import CompiledRoute
from proxy.usage import Usage

log = structlog.get_logger("proxy.shadow")


class ShadowBudgets:
    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics
        self._budgets: dict[str, TokenBudget] = {}
        self._spent: set[str] = set()  # routes whose budget ran out (logged once per episode)
        self._blind: set[str] = set()  # routes warned that answers report no usage

    def configure(self, routes: Sequence[CompiledRoute]) -> None:
        """Each route's budget; one whose allowance did not change keeps its level.
        The remaining gauge shows each at once (a new allowance starts full)."""
        now = time.monotonic()
        budgets = {}
        for r in routes:
            if r.token_budget:
                old = self._budgets.get(r.name)
                keep = old is not None and old.per_minute == r.token_budget
                budget = budgets[r.name] = old if keep and old else TokenBudget(r.token_budget, now)
                self._metrics.budget(r.name, budget.remaining(now))
        for name in self._budgets.keys() - budgets.keys():  # no budget any more: no series
            self._metrics.forget_budget(name)
        self._budgets = budgets

    def reserve(self, name: str) -> float | None:
        """Reserve a shadow call's expected tokens; None when the budget is spent."""
        budget = self._budgets.get(name)
        if budget is None:
            return 0.0
        now = time.monotonic()
        reserved = budget.admit(now)
        self._metrics.budget(name, budget.remaining(now))  # refilled while idle too
        if reserved is None:
            if name not in self._spent:
                self._spent.add(name)
                log.warning("shadow_budget_exhausted", route=name, per_minute=budget.per_minute)
        elif name in self._spent:
            self._spent.discard(name)
            log.info("shadow_budget_restored", route=name)
        return reserved

    def charge(self, job: ShadowJob, usage: Usage | None) -> None:
        """One agent call's real cost, against the job's reservation (the first
        call's) or on top of it (the extra samples a quorum or noise asks for)."""
        name = job.route.name
        budget = self._budgets.get(name)
        reserved, job.reserved = job.reserved or 0.0, None
        if budget is None:
            return
        now = time.monotonic()
        tokens = _tokens(usage)
        budget.settle(reserved, tokens, now)
        self._metrics.budget(name, budget.remaining(now))
        if tokens is None and budget.estimate == 0 and name not in self._blind:
            self._blind.add(name)  # once: a budget that never learns a cost stops nothing
            log.warning(
                "shadow_budget_blind",
                route=name,
                reason="the agent's answers report no token usage (set routes[].agent, or "
                "ask the agent for usage): the budget cannot count what they cost",
            )

    def refund(self, job: ShadowJob) -> None:
        """The job ended without calling the agent: its reservation goes back."""
        budget = self._budgets.get(job.route.name)
        if budget is not None and job.reserved:
            budget.refund(job.reserved)
        job.reserved = None


def _tokens(usage: Usage | None) -> int | None:
    """What an answer cost in tokens, as far as it said."""
    if usage is None or not usage.reported:
        return None
    return (usage.input_tokens or 0) + (usage.output_tokens or 0)
