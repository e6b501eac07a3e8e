"""When to refresh and how long to wait after a failure: pure functions.

Nothing here reads a clock, touches the network or draws its own randomness:
``now``, lifetimes and a ``random.Random`` come in as arguments, so every
decision can be tested with a table and a seed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from random import Random

# Re-exported (the alias says so to mypy): callers know Lane and ERROR_CODES as policy's.
from sidecar.error_codes import ERROR_CODES as ERROR_CODES  # noqa: PLC0414
from sidecar.error_codes import Lane as Lane  # noqa: PLC0414
from sidecar.error_codes import lane_for

RETRY_AFTER_CAP_SECONDS = 3600.0
SLOW_LANE_JITTER = 0.1


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When to refresh after a success (the ``refresh`` section)."""

    at_fraction: float = 0.8
    jitter_fraction: float = 0.1
    first_from_fraction: float = 0.1
    min_interval_seconds: float = 5.0
    max_interval_seconds: float = 3600.0


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How long to wait after a failure (the ``backoff`` section)."""

    initial_seconds: float = 1.0
    max_seconds: float = 300.0
    multiplier: float = 2.0


def classify(status: int, error_code: str | None) -> tuple[Lane, str]:
    """Lane and metric reason of an HTTP answer that is not a usable session.

    A known ``errorCode`` decides whatever the status; otherwise the status does.
    An unknown code never becomes a label: it would make the label set unbounded.
    """
    lane = lane_for(error_code)
    if lane is not None and error_code is not None:
        return lane, error_code
    reason = f"http_{status}"
    if status >= 500 or status == 429 or status < 300:
        return Lane.RETRYABLE, reason
    if status in (401, 403):
        return Lane.CREDENTIAL, reason
    return Lane.REQUEST, reason


def next_refresh(
    lifetime: float, policy: RefreshPolicy, rng: Random, *, first: bool = False
) -> float:
    """Seconds after the request was sent at which to refresh a token living ``lifetime`` s.

    Jitter only moves the refresh earlier, inside ``[(1 - jitter/at) * T, T]`` with
    ``T = min(at * lifetime, max_interval)``, so it never passes expiry. The first
    token a process obtains (``first``) is refreshed anywhere in
    ``[(first_from/at) * T, T]`` instead: a fleet rolled out within seconds would
    otherwise refresh in one wave for hours, as a 10 % band spreads it only slowly.
    The minimum interval wins over a shorter lifetime, as a guard against a hot loop.
    """
    target = min(policy.at_fraction * lifetime, policy.max_interval_seconds)
    if policy.at_fraction > 0:
        if first:
            fraction = policy.first_from_fraction / policy.at_fraction
        else:
            fraction = 1 - policy.jitter_fraction / policy.at_fraction
        earliest = min(max(0.0, fraction * target), target)
    else:
        earliest = target
    return max(rng.uniform(earliest, target), policy.min_interval_seconds)


def retry_delay(
    failures: int,
    lane: Lane,
    backoff: BackoffPolicy,
    rng: Random,
    *,
    retry_after: float | None = None,
    remaining: float | None = None,
    failing_for: float = 0.0,
) -> float:
    """Seconds to wait after the ``failures``-th consecutive failed attempt.

    Patient while valid: while the token on disk is still valid for ``remaining``
    seconds and ``remaining/2 >= patience_floor``, a failure of any class is retried
    at ``U[remaining/4, remaining/2]``: the application loses nothing by waiting, one
    more attempt still comes before expiry, and the upstream is spared the retries.
    Otherwise retryable errors back off exponentially, the ceiling raised to at least
    ``min(max, failing_for)`` (a sidecar that waited patiently and then lost its token
    continues at the cap, not at 1 s): full jitter ``[0, c]`` below the cap, equal
    jitter ``[max/2, max]`` at it. Credential and request errors take the slow lane
    (``max_seconds`` ± 10 %). The server's ``Retry-After`` (clamped to an hour) is a
    lower bound over all of these.
    """
    floor = 0.0 if retry_after is None else min(max(retry_after, 0.0), RETRY_AFTER_CAP_SECONDS)
    if remaining is not None and remaining / 2 >= patience_floor(backoff):
        delay = rng.uniform(remaining / 4, remaining / 2)
    elif lane is Lane.RETRYABLE:
        ceiling = backoff_ceiling(failures, backoff, failing_for)
        if ceiling >= backoff.max_seconds:
            delay = rng.uniform(backoff.max_seconds / 2, backoff.max_seconds)
        else:
            delay = rng.uniform(0.0, ceiling)
    else:
        delay = backoff.max_seconds * rng.uniform(1 - SLOW_LANE_JITTER, 1 + SLOW_LANE_JITTER)
    return max(delay, floor)


def patience_floor(backoff: BackoffPolicy) -> float:
    """Half the validity left must reach this for a sidecar to wait patiently.

    It is also the closest spacing of those patient attempts, so a fleet near expiry
    does not pile retries into its last seconds.
    """
    return max(backoff.initial_seconds, backoff.max_seconds / 10)


def backoff_ceiling(failures: int, backoff: BackoffPolicy, failing_for: float = 0.0) -> float:
    """Upper bound of the jittered draw after ``failures`` consecutive failures.

    ``initial * multiplier^(failures-1)`` up to the cap, raised to at least
    ``min(max, failing_for)``, the seconds spent failing so far.
    """
    spent = min(backoff.max_seconds, failing_for)
    exponent = max(failures - 1, 0)
    if backoff.multiplier > 1:
        # Past this exponent the product only overflows; the cap has long won.
        limit = math.log(backoff.max_seconds / backoff.initial_seconds) / math.log(
            backoff.multiplier
        )
        if exponent >= limit:
            return backoff.max_seconds
    grown = min(backoff.max_seconds, backoff.initial_seconds * backoff.multiplier**exponent)
    return max(grown, spent)


_DELAY_SECONDS = re.compile(r"[0-9]+")
# RFC 9110 5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms a recipient
# must still accept. Day and month names are case-sensitive; every date is UTC.
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_MONTH = "(?P<month>" + "|".join(_MONTHS) + ")"
_TIME = "(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
_HTTP_DATES = (
    re.compile(
        rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (?P<day>[0-9]{{2}}) {_MONTH} (?P<year>[0-9]{{4}}) "
        rf"{_TIME} GMT"
    ),
    re.compile(
        r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
        rf"(?P<day>[0-9]{{2}})-{_MONTH}-(?P<year2>[0-9]{{2}}) {_TIME} GMT"
    ),
    re.compile(
        rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) {_MONTH} (?P<day>[0-9 ][0-9]) {_TIME} "
        r"(?P<year>[0-9]{4})"
    ),
)
# Far beyond the cap the policy applies, yet finite: a logged value stays valid JSON.
RETRY_AFTER_MAX_SECONDS = 1e9


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` (Unix time) that a ``Retry-After`` header asks for, or None.

    Both forms of RFC 9110 are accepted: delay-seconds (ASCII digits only: ``'²'`` is a
    digit to ``str.isdigit``) and an HTTP-date in any of its three formats, always UTC.
    A date in the past means "now" (0); anything else is ignored. Never raises.
    """
    if value is None:
        return None
    text = value.strip(" \t")
    if _DELAY_SECONDS.fullmatch(text):
        # float() of a long digit string is inf, not an error; int() would refuse it.
        return min(float(text), RETRY_AFTER_MAX_SECONDS)
    when = _http_date(text, now)
    if when is None:
        return None
    return min(max(0.0, when - now), RETRY_AFTER_MAX_SECONDS)


def _http_date(text: str, now: float) -> float | None:
    """The Unix time of an HTTP-date, or None when ``text`` is not one."""
    import calendar  # rare; not worth its import on the way to the first token

    for pattern in _HTTP_DATES:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        fields = match.groupdict()
        if fields.get("year2") is not None:
            year = _rfc850_year(int(fields["year2"]), now)
        else:
            year = int(fields["year"])
        month, day = _MONTHS[fields["month"]], int(fields["day"])
        hour, minute = int(fields["hour"]), int(fields["minute"])
        second = min(int(fields["second"]), 59)  # a leap second, 60, is one more second
        if not (year >= 1 and 1 <= day <= calendar.monthrange(year, month)[1]):
            return None
        if hour > 23 or minute > 59:
            return None
        return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    return None


def _rfc850_year(two_digits: int, now: float) -> int:
    """RFC 9110: a two-digit year more than 50 years ahead is the last such year past."""
    current = int(1970 + now // 31_556_952) if math.isfinite(now) else 2000
    year = current - current % 100 + two_digits
    if year > current + 50:
        year -= 100
    return year
