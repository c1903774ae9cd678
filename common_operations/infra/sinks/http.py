"""The HTTP sink and source: another service owns the entity and takes/serves rows over HTTP.

Import: ``POST sink.url`` with ``{"entity", "mode", "dryRun", "rows": [{"row": n, "data": {...}}]}``
and an ``Idempotency-Key: <job_id>:<chunk_no>`` header (``<job_id>:<chunk_no>.<part>`` when a
chunk is split into ``sink.batch_size`` parts), so a chunk sent again after a crash is recognised.
The answer is ``200 {"results": [{"row": n, "ok": bool, "code"?, "field"?, "message"?}]}`` with a
result for every row sent.

Export: ``GET sink.export_url?page=1&pageSize=N&<field>=<value>&<field>[gte]=<value>`` answering
``{"items": [{field: value}], "nextPage": int | null}``.

Connection errors, timeouts, 5xx and 429 are retried with exponential backoff (``Retry-After`` is
respected), then raise :class:`SinkUnavailable` (retryable); other 4xx raise :class:`SinkRejected`
(not retryable). A :class:`CircuitBreaker` shared by the calls to one sink fails fast while the
sink keeps failing.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from common_operations.domain.entities import (
    EntitySpec,
    FieldSpec,
    Filter,
    ImportMode,
    Rejection,
    RowInvalid,
    field_parser,
    format_text,
    format_value,
)
from common_operations.domain.errors import DomainError, ErrorKind, ServiceUnavailable, quoted

_PROBLEM_TEXT_LIMIT = 300


class SinkUnavailable(ServiceUnavailable):
    """The sink cannot be reached or keeps failing; retry later (the activity is retried)."""

    code = "SINK_UNAVAILABLE"


class SinkRejected(DomainError):
    """The sink refused the request itself (4xx other than 429, or a malformed answer); do not retry."""

    code = "SINK_REJECTED"
    kind = ErrorKind.INVALID


class CircuitBreaker:
    """Fails fast while a sink keeps failing.

    Opens after ``failure_threshold`` consecutive failed calls; lets one trial call through after
    ``reset_after`` seconds (half-open), and closes again when it succeeds.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_after: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a closed breaker; ``clock`` is injectable for tests."""
        if failure_threshold < 1 or reset_after < 0:
            raise ValueError("failure_threshold must be at least 1 and reset_after not negative")
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self._clock = clock
        # What the latest failed call met, so that a fast failure can say why the sink is down.
        self.last_error: str | None = None
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        if self._opened_at is None:
            return "closed"
        if self._trial or self._clock() - self._opened_at >= self.reset_after:
            return "half_open"
        return "open"

    def before_call(self) -> None:
        """Let a call through, or fail fast.

        Raises:
            SinkUnavailable: the circuit is open (or its one trial call is under way).
        """
        if self._opened_at is None:
            return
        remaining = self._opened_at + self.reset_after - self._clock()
        if remaining <= 0 and not self._trial:
            self._trial = True
            return
        until = datetime.now(UTC) + timedelta(seconds=max(remaining, 0.0))
        raise SinkUnavailable(
            f"circuit open until {until.isoformat(timespec='seconds')}: the sink failed "
            f"{self._failures} times in a row",
            retry_after=max(remaining, 0.0),
        )

    def record_success(self) -> None:
        """A call succeeded: close the circuit."""
        self._failures = 0
        self._opened_at = None
        self._trial = False

    def record_failure(self) -> None:
        """A call failed: count it, and open (again) at the threshold or after a failed trial."""
        self._failures += 1
        if self._trial or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
        self._trial = False


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _problem_text(response: httpx.Response) -> str:
    """The sink's own explanation: an RFC 7807 problem's detail/title, a ``message``, or the text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("title", "detail", "message", "error") if body.get(k)]
        if parts:
            return "; ".join(parts)[:_PROBLEM_TEXT_LIMIT]
    text = response.text.strip()
    return text[:_PROBLEM_TEXT_LIMIT] or response.reason_phrase


class _Caller:
    """Requests with retries, backoff and a circuit breaker."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        timeout: float,
        retries: int,
        breaker: CircuitBreaker | None,
        backoff: float,
        max_backoff: float,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.retries = max(0, retries)
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.backoff = backoff
        self.max_backoff = max_backoff

    async def call(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        params: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            try:
                self.breaker.before_call()
            except SinkUnavailable as err:
                # Say which sink, and why it is considered down, not only that the circuit is open.
                reason = last if attempt else self.breaker.last_error
                cause = f"; last error: {reason}" if reason else ""
                raise SinkUnavailable(f"{method} {url}: {err.message}{cause}", **err.details) from None
            delay: float | None = None
            try:
                response = await self.client.request(
                    method,
                    url,
                    content=body,
                    params=tuple(params) if params else None,
                    headers=headers,
                    timeout=self.timeout,
                )
            except httpx.TransportError as exc:
                self.breaker.record_failure()
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self.breaker.last_error = last
            else:
                status = response.status_code
                if status >= 500 or status == 429:
                    self.breaker.record_failure()
                    last = f"HTTP {status}: {_problem_text(response)}"
                    self.breaker.last_error = last
                    delay = _retry_after(response)
                else:
                    # The sink answered: even a refusal shows it is up.
                    self.breaker.record_success()
                    if status >= 400:
                        raise SinkRejected(
                            f"{method} {url} was refused with HTTP {status}: {_problem_text(response)}",
                            status=status,
                        )
                    return response
            if attempt == self.retries:
                break
            if delay is None:
                # Full jitter keeps many workers from retrying in lockstep.
                delay = random.uniform(0, self.backoff * 2**attempt)
            await asyncio.sleep(min(delay, self.max_backoff))
        raise SinkUnavailable(f"{method} {url} failed after {self.retries + 1} attempts: {last}")


class HttpSink:
    """Sends import chunks to the service that owns the entity."""

    def __init__(
        self,
        entity: EntitySpec,
        client: httpx.AsyncClient,
        *,
        fields: Sequence[FieldSpec] | None = None,
        timeout: float | None = None,
        retries: int = 3,
        breaker: CircuitBreaker | None = None,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        """Bind the sink to an entity whose sink is ``http``.

        Args:
            entity: the declaration (``sink.url`` is where chunks are POSTed).
            client: a shared client.
            fields: the fields of the row tuples (the converter's); all declared fields by default.
            timeout: seconds per request (default ``sink.timeout``).
            retries: attempts after the first one for retryable failures.
            breaker: shared by every call to this sink (a fresh one by default).
            backoff: base of the exponential backoff, seconds.
            max_backoff: longest wait between attempts, seconds (caps ``Retry-After`` too).

        Raises:
            ValueError: the entity has no http sink url.
        """
        if entity.sink.kind != "http" or not entity.sink.url:
            raise ValueError(f"entity {entity.name!r} has no http sink url")
        self.entity = entity
        self.url = entity.sink.url
        self.fields: tuple[FieldSpec, ...] = tuple(fields) if fields is not None else entity.fields
        self.batch_size = entity.sink.batch_size
        self._caller = _Caller(
            client,
            timeout=timeout if timeout is not None else entity.sink.timeout,
            retries=retries,
            breaker=breaker,
            backoff=backoff,
            max_backoff=max_backoff,
        )

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker of this sink's calls."""
        return self._caller.breaker

    async def write_chunk(
        self,
        job_id: str,
        chunk_no: int,
        rows: Sequence[tuple[int, tuple[Any, ...]]],
        mode: ImportMode,
        dry_run: bool = False,
    ) -> list[Rejection]:
        """POST one chunk; the rows the sink rejected.

        Raises:
            SinkUnavailable: the sink could not be reached or kept failing (retry later).
            SinkRejected: the sink refused the request, or answered without a result for every row.
        """
        if not rows:
            return []
        size = self.batch_size or len(rows)
        parts = [rows[i : i + size] for i in range(0, len(rows), size)]
        rejected: list[Rejection] = []
        for part_no, part in enumerate(parts, start=1):
            key = f"{job_id}:{chunk_no}" if len(parts) == 1 else f"{job_id}:{chunk_no}.{part_no}"
            rejected.extend(await self._post(key, part, mode, dry_run))
        return rejected

    async def _post(
        self, key: str, rows: Sequence[tuple[int, tuple[Any, ...]]], mode: ImportMode, dry_run: bool
    ) -> list[Rejection]:
        fields = self.fields
        payload = {
            "entity": self.entity.name,
            "mode": mode,
            "dryRun": dry_run,
            "rows": [
                {
                    "row": row_no,
                    "data": {f.name: format_value(f, v) for f, v in zip(fields, values, strict=True)},
                }
                for row_no, values in rows
            ],
        }
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        response = await self._caller.call(
            "POST",
            self.url,
            body=body,
            headers={"Content-Type": "application/json", "Idempotency-Key": key},
        )
        results = _results(response, self.url)
        return per_row_rejections(f"POST {self.url}", rows, results)


def per_row_rejections(
    where: str, rows: Sequence[tuple[int, Any]], results: Mapping[int, Mapping[str, Any]]
) -> list[Rejection]:
    """The rows a sink refused, from its per-row ``results``; every row sent must have one.

    Raises:
        SinkRejected: the answer lacks a result for some row.
    """
    sent = [row_no for row_no, _ in rows]
    missing = [n for n in sent if n not in results]
    if missing:
        shown = ", ".join(str(n) for n in missing[:10]) + (" …" if len(missing) > 10 else "")
        raise SinkRejected(
            f"{where} answered without a result for {len(missing)} row(s): {shown}",
            missing=missing[:100],
        )
    rejected: list[Rejection] = []
    for row_no in sent:
        result = results[row_no]
        if result.get("ok") is True:
            continue
        code = str(result.get("code") or "REJECTED")
        field = result.get("field")
        message = str(result.get("message") or "rejected by the sink")
        rejected.append((row_no, code, str(field) if field is not None else None, message))
    return rejected


def _results(response: httpx.Response, url: str) -> dict[int, dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        raise SinkRejected(f"POST {url} answered {response.status_code} without a JSON body") from None
    items = body.get("results") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise SinkRejected(f"POST {url} answered without a `results` list")
    results: dict[int, dict[str, Any]] = {}
    for item in items:
        if (
            not isinstance(item, dict)
            or isinstance(item.get("row"), bool)
            or not isinstance(item.get("row"), int)
        ):
            raise SinkRejected(f"POST {url} answered a malformed result {quoted(item)}")
        results[item["row"]] = item
    return results


class HttpSource:
    """Reads an entity's rows page by page from the service that owns it."""

    def __init__(
        self,
        entity: EntitySpec,
        client: httpx.AsyncClient,
        *,
        timeout: float | None = None,
        retries: int = 3,
        breaker: CircuitBreaker | None = None,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        """Bind the source to an entity whose sink has an ``export_url``.

        Raises:
            ValueError: the entity has no http export url.
        """
        if entity.sink.kind != "http" or not entity.sink.export_url:
            raise ValueError(f"entity {entity.name!r} has no http export_url")
        self.entity = entity
        self.url = entity.sink.export_url
        self.fields: tuple[FieldSpec, ...] = entity.fields
        self._parsers = [field_parser(f, rules=False, nullable=True) for f in self.fields]
        self._caller = _Caller(
            client,
            timeout=timeout if timeout is not None else entity.sink.timeout,
            retries=retries,
            breaker=breaker,
            backoff=backoff,
            max_backoff=max_backoff,
        )

    @staticmethod
    def filter_params(filters: Sequence[Filter]) -> list[tuple[str, str]]:
        """``filters`` as query parameters: ``field=value`` (repeated for ``in``), ``field[gte]=value``."""
        params: list[tuple[str, str]] = []
        for flt in filters:
            name = flt.field.name
            if flt.op == "eq":
                params.append((name, format_text(flt.field, flt.value)))
            elif flt.op == "in":
                params.extend((name, format_text(flt.field, v)) for v in flt.value)
            else:
                params.append((f"{name}[{flt.op}]", format_text(flt.field, flt.value)))
        return params

    async def stream(
        self, filters: Sequence[Filter], *, batch_rows: int = 5000
    ) -> AsyncGenerator[list[tuple[Any, ...]]]:
        """The selected rows as ``fields`` tuples, one batch per page.

        Raises:
            SinkUnavailable: the source could not be reached or kept failing.
            SinkRejected: the source refused the request or answered malformed items.
        """
        base = self.filter_params(filters)
        page: int | None = 1
        while page is not None:
            response = await self._caller.call(
                "GET", self.url, params=[("page", str(page)), ("pageSize", str(batch_rows)), *base]
            )
            try:
                body = response.json()
            except ValueError:
                raise SinkRejected(f"GET {self.url} page {page} answered without a JSON body") from None
            items = body.get("items") if isinstance(body, dict) else None
            next_page = body.get("nextPage") if isinstance(body, dict) else None
            if not isinstance(items, list) or not (
                next_page is None or (isinstance(next_page, int) and not isinstance(next_page, bool))
            ):
                raise SinkRejected(f"GET {self.url} page {page} answered without `items` and `nextPage`")
            if next_page == page:
                raise SinkRejected(f"GET {self.url} page {page} names itself as the next page")
            batch = [self._row(item, page, i) for i, item in enumerate(items)]
            if batch:
                yield batch
            page = next_page

    def _row(self, item: Any, page: int, index: int) -> tuple[Any, ...]:
        if not isinstance(item, dict):
            raise SinkRejected(f"GET {self.url} page {page} item {index}: expected an object")
        try:
            return tuple(parse(item.get(f.name)) for f, parse in zip(self.fields, self._parsers, strict=True))
        except RowInvalid as exc:
            raise SinkRejected(f"GET {self.url} page {page} item {index}: {exc.message}") from None
