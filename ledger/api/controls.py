"""The control endpoints: operator decisions, recorded as the token's name.

Each control is one row of `CONTROLS`: the path, the function of
`ledger.operations` that applies it (the CLI's code path), and its words
for the OpenAPI document. A row becomes `POST path` with a JSON body
holding at least `reason`; the answer is the function's result,
`ControlResult.as_dict()`. A control with more arguments than a reason
gives its own body model, a subclass of `ControlBody` whose fields are
passed on by name.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Body, Path, Request, Security
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ledger.api.auth import Caller, require_operator
from ledger.api.errors import error_responses
from ledger.api.params import MAX_REASON, EffectParam, RunParam, reason
from ledger.api.responses import JsonResponse
from ledger.effect_controls import EffectDecision, decide_effect
from ledger.operations import (
    ControlResult,
    RecordDecision,
    abandon_run,
    discard_record,
    lift_pause_of,
    pause_run,
    rerun_run,
)
from ledger.promotions import PromotionDecision, promote_record
from projections.reader import SharedReader

__all__ = ["CONTROLS", "Control", "ControlBody", "control_router"]

log = structlog.get_logger(__name__)

# One line of text with something in it: what `params.reason` accepts,
# said in JSON Schema so generated clients and tests send such reasons.
_REASON_PATTERN = (
    r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
)


class ControlBody(BaseModel):
    """The body of every control: why the operator decides it."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[
        str,
        Field(
            description="Why: recorded with the decision, shown by history "
            "and explain. One line of text.",
            json_schema_extra={
                "minLength": 1,
                "maxLength": MAX_REASON,
                "pattern": _REASON_PATTERN,
            },
        ),
        AfterValidator(reason),
    ]

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of the control's function, besides `by`."""
        return self.model_dump()


@dataclass(frozen=True)
class Control:
    """One operator control offered over HTTP."""

    # The endpoint, with one `{...}` naming what it applies to.
    path: str

    # `(location, target, *, by, reason, ...) -> ControlResult`.
    apply: Callable[..., ControlResult]
    summary: str
    description: str
    body: type[ControlBody] = ControlBody
    result: type[ControlResult] = ControlResult


class RerunBody(ControlBody):
    """A rerun's body: why, and the named point the redo starts at."""

    point: Annotated[
        str,
        Field(
            min_length=1,
            max_length=200,
            description="Where the redo starts: step:NAME, batch:N or "
            "step:NAME/batch:N (batches numbered from 0, as history shows).",
        ),
    ]


def _open_messages(view: Any, bootstrap_servers: str | None, effects: Any) -> Any:
    """The Kafka adapter, loaded only for a consumer's record, as the CLI
    does: the HTTP adapter and the Kafka one stay apart."""
    from consumers.promotion import open_message_promotion

    return open_message_promotion(view, bootstrap_servers, effects)


def _promote(location: Any, record: str, *, by: str, reason: str) -> ControlResult:
    return promote_record(
        location, record, by=by, reason=reason, open_messages=_open_messages
    )


def _decide(done: bool) -> Callable[..., ControlResult]:
    def apply(location: Any, effect: str, *, by: str, reason: str) -> ControlResult:
        return decide_effect(
            location,
            effect,
            done=done,
            by=by,
            reason=reason,
            open_messages=_open_messages,
        )

    return apply


CONTROLS: tuple[Control, ...] = (
    Control(
        path="/v1/runs/{run}/abandon",
        apply=abandon_run,
        summary="Mark a run whose worker will never return",
        description="As `ledger abandon RUN --reason TEXT`, decided by the "
        "token's name: an open attempt is closed, its worker's later appends "
        "are refused, and `ledger resume RUN` starts a new attempt from the "
        "resume point. Refused with 409, recording nothing, for a completed "
        "or already abandoned run.",
    ),
    Control(
        path="/v1/runs/{run}/pause",
        apply=pause_run,
        summary="Pause a run at its next batch boundary",
        description="As `ledger pause RUN --reason TEXT`: the run's worker "
        "stops at its next batch boundary and waits, holding its lease; a run "
        "with no worker is paused at once. `worker` in the answer names a "
        "live worker that will stop. Refused with 409 for a completed, "
        "abandoned or already paused run.",
    ),
    Control(
        path="/v1/runs/{run}/resume",
        apply=lift_pause_of,
        summary="Lift a run's pause",
        description="As `ledger resume RUN` on a paused run: a waiting worker "
        "goes on by itself (`worker` in the answer names it). With no worker "
        "waiting, the pause is lifted and `ledger resume RUN` (or `ledger "
        "consume` for a consumer) starts the next attempt: the API never runs "
        "a job itself. Refused with 409 for a run that is not paused.",
    ),
    Control(
        path="/v1/runs/{run}/rerun",
        apply=rerun_run,
        body=RerunBody,
        summary="Rerun a run from a named point",
        description="As `ledger rerun RUN --from POINT --reason TEXT`, "
        "recording the decision: the work before the point is kept, and the "
        "next attempt (`ledger resume RUN`) redoes the rest; the API does not "
        "start it. Refused with 409 for a run a live worker holds, a consumer's "
        "run, or a point that does not exist. Unlike the CLI, the kept output is not "
        "checked first (the server does not load job code): the next attempt "
        "checks it and fails with OutputLost if it is gone.",
    ),
    Control(
        path="/v1/quarantine/{record}/discard",
        apply=discard_record,
        result=RecordDecision,
        summary="Discard a quarantined record",
        description="As `ledger quarantine discard ID --reason TEXT`: the "
        "record will never be processed; it stays in the log with its reason. "
        "Refused with 409 for a record already discarded or promoted.",
    ),
    Control(
        path="/v1/quarantine/{record}/promote",
        apply=_promote,
        result=PromotionDecision,
        summary="Promote a quarantined record back into processing",
        description="As `ledger quarantine promote ID`: the record is read "
        "again from its source (or its whole quarantined payload) and run "
        "through the job's own code, in the server's process; `outcome` says "
        "whether it was written, rejected again (quarantined anew, with its "
        "lineage) or failed (it stays pending). Refused with 409 for a record "
        "already discarded or promoted, or a run a live worker holds.",
    ),
    Control(
        path="/v1/effects/{effect}/confirm",
        apply=_decide(done=True),
        result=EffectDecision,
        summary="Decide that an uncertain effect happened",
        description="As `ledger effects confirm KEY --reason TEXT`: the effect "
        "is recorded as done and never called again; the record waiting in "
        "quarantine for it is then promoted (`promoted` in the answer). "
        "Refused with 409 for an effect that is not uncertain.",
    ),
    Control(
        path="/v1/effects/{effect}/retry",
        apply=_decide(done=False),
        result=EffectDecision,
        summary="Decide that an uncertain effect did not happen",
        description="As `ledger effects retry KEY --reason TEXT`: the record "
        "waiting in quarantine for it is promoted, and the effect is called "
        "again with the same key. Refused with 409 for an effect that is not "
        "uncertain.",
    ),
)

# What a path's `{...}` may name, and how it is described.
_TARGETS: dict[str, Any] = {
    "run": RunParam,
    "effect": EffectParam,
    "record": Annotated[
        str,
        Path(
            min_length=1,
            max_length=100,
            description="A quarantine id or a unique prefix of at least 4 of "
            "its characters.",
        ),
    ],
}


def control_router(controls: tuple[Control, ...] = CONTROLS) -> APIRouter:
    router = APIRouter(
        tags=["controls"],
        responses=error_responses(400, 401, 403, 404, 409, 413, 422, 503),
        default_response_class=JsonResponse,
    )
    for control in controls:
        router.add_api_route(
            control.path,
            _endpoint(control),
            methods=["POST"],
            summary=control.summary,
            description=control.description,
            response_model=control.result,
            name=control.path.rsplit("/", 1)[-1],
        )
    return router


def _endpoint(control: Control) -> Callable[..., Any]:
    """The endpoint of one control, with the signature FastAPI reads."""
    found = re.findall(r"\{(\w+)\}", control.path)
    if len(found) != 1 or found[0] not in _TARGETS:
        raise ValueError(
            f"the control path {control.path} must hold exactly one of "
            f"{', '.join('{' + name + '}' for name in _TARGETS)}"
        )
    target_name = found[0]

    async def endpoint(**values: Any) -> JsonResponse:
        request: Request = values["request"]
        caller: Caller = values["caller"]
        body: ControlBody = values["body"]
        reader: SharedReader = request.app.state.reader

        # The control's function is the CLI's: synchronous, and it opens the
        # store itself; a worker thread keeps the event loop free meanwhile.
        result = await asyncio.to_thread(
            functools.partial(
                control.apply,
                reader.location,
                values[target_name],
                by=caller.name,
                **body.arguments(),
            )
        )
        log.info(
            "control_applied",
            action=result.action,
            run_id=result.run_id,
            by=caller.name,
        )
        return JsonResponse(result.as_dict())

    keyword = inspect.Parameter.KEYWORD_ONLY
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("request", keyword, annotation=Request),
            inspect.Parameter(target_name, keyword, annotation=_TARGETS[target_name]),
            inspect.Parameter(
                "body", keyword, annotation=Annotated[control.body, Body()]
            ),
            inspect.Parameter(
                "caller",
                keyword,
                annotation=Annotated[Caller, Security(require_operator)],
            ),
        ]
    )
    return endpoint
