"""How the API's answers are described in its OpenAPI document.

The answers themselves are the read side's documents (see
`projections.documents`), encoded as they are; these models only describe
them, built from the same view classes so that the description cannot
drift from what is sent.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from projections.views import AttemptView, QuarantineView, RunView

__all__ = ["ExplainDocument", "HistoryDocument", "QuarantineDocument"]


class HistoryDocument(BaseModel):
    """A run and its attempts, as `ledger history RUN --json` prints them."""

    run: RunView
    attempts: list[AttemptView]


class ExplainDocument(BaseModel):
    """The one sentence, as `ledger explain RUN --json` prints it."""

    run_id: str
    state: str
    explanation: str = Field(
        description="What failed, where it resumes, what is done, what is "
        "quarantined, and the one command that recovers it."
    )
    resume_point: dict[str, Any] | None
    last_checkpoint: dict[str, Any] | None


class QuarantineDocument(BaseModel):
    """Quarantined records, as `ledger quarantine list --json` prints them."""

    total: int = Field(description="How many records match, in all.")
    records: list[QuarantineView] = Field(description="The first `limit` of them.")
