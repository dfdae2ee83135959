"""``paceline plan``: how long and how much, from the pool's limits and what is pending."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .limits import Limit

if TYPE_CHECKING:
    from .keys import KeyPool

__all__ = ["Capacity", "Plan", "capacity", "capacity_of", "make_plan", "pace"]


@dataclass(frozen=True, slots=True)
class Capacity:
    """Requests a pool can send per minute and per day (``inf`` when nothing limits it)."""

    per_minute: float
    per_day: float
    groups: int


def pace(pool: KeyPool, now: float) -> float:
    """Requests per minute the keys allow *now* (``inf``: nothing known bounds them).

    Smooth windows give their rate; a fixed window with something left gives no bound (it
    is spent as fast as the job can), a spent one nothing until its reset; daily quotas
    spent give nothing. For sizing the workers, not for planning a long run
    (:func:`capacity` averages fixed windows over their length).
    """
    total = 0.0
    for key, _ in pool.groups():
        if key.state == "disabled":
            continue
        view = pool.limiter.view(key.group_id, now)
        if any(day.exhausted and day.resets_at > now for day in view.today):
            continue
        if any(w.spent and w.resets_at > now for w in view.windows):
            continue
        rates = [
            lim.per_minute()
            for lim in view.limits
            if lim.unit == "requests" and not lim.daily and not lim.fixed
        ]
        total += min(rates, default=math.inf)
    return total


def _group_capacity(limits: list[Limit]) -> tuple[float, float]:
    requests = [lim for lim in limits if lim.unit == "requests"]
    per_minute = min((lim.per_minute() for lim in requests if not lim.daily), default=math.inf)
    per_day = min(
        (lim.count * 86400 / lim.seconds for lim in requests if lim.daily), default=math.inf
    )
    return per_minute, min(per_day, per_minute * 1440)


def capacity(pool: KeyPool) -> Capacity:
    """Sum over key groups (keys sharing a quota count once), with the limits in force:
    configured, learned from the provider, or lowered to what it announced."""
    per_minute = per_day = 0.0
    groups = pool.groups()
    for key, _ in groups:
        if key.state == "disabled":
            continue
        minute, day = _group_capacity(list(pool.limiter.view(key.group_id).limits))
        per_minute += minute
        per_day += day
    return Capacity(per_minute, per_day, len(groups))


@dataclass(frozen=True, slots=True)
class Plan:
    pending: int
    requests_per_item: float
    capacity: Capacity
    today_left: float
    items_per_minute: float
    items_per_day: float
    seconds: float | None


def capacity_of(groups: list[list[Limit]]) -> Capacity:
    """Sum over key groups given by their limits (the limits in force, e.g. as stored)."""
    per_minute = per_day = 0.0
    for limits in groups:
        minute, day = _group_capacity(limits)
        per_minute += minute
        per_day += day
    return Capacity(per_minute, per_day, len(groups))


def make_plan(
    pool: KeyPool,
    pending: int,
    requests_per_item: float,
    today_spent: float,
    until_reset: float,
    *,
    cap: Capacity | None = None,
) -> Plan:
    """When ``pending`` items would be done at the pool's full speed.

    Today only what is left of today's quota can be spent; after the daily reset (in
    ``until_reset`` seconds) a full day's quota each day. ``seconds`` is ``None`` when
    nothing limits the pool (no basis to plan on).
    """
    cap = cap or capacity(pool)
    rpi = max(requests_per_item, 1e-9)
    items_per_minute = cap.per_minute / rpi
    items_per_day = cap.per_day / rpi
    today_left = max(0.0, cap.per_day - today_spent)
    if math.isinf(cap.per_minute) and math.isinf(cap.per_day):
        return Plan(pending, requests_per_item, cap, today_left, math.inf, math.inf, None)
    if cap.per_minute <= 0 and cap.per_day <= 0:  # no keys (or none usable): no basis
        return Plan(pending, requests_per_item, cap, today_left, 0.0, 0.0, None)
    need = pending * rpi
    per_second = (cap.per_minute if not math.isinf(cap.per_minute) else cap.per_day / 1440) / 60
    if need <= today_left or math.isinf(cap.per_day):
        seconds = need / per_second
    else:
        rest = need - today_left
        days = math.ceil(rest / cap.per_day)
        last_day = rest - (days - 1) * cap.per_day
        seconds = until_reset + (days - 1) * 86400 + last_day / per_second
    return Plan(
        pending, requests_per_item, cap, today_left, items_per_minute, items_per_day, seconds
    )
