"""OpenAI-compatible request and response bodies (the subset we serve), as pydantic models.

Unknown request fields are ignored, as OpenAI's own server does for fields it does not use; the one extra field
we read is `sharers` (which sharers a `c2c` request fuses). Every number is range-checked here, so a malformed
request is a 400 before it reaches a model.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    user: str | None = None
    sharers: list[str] | None = None  # extra: the sharers a c2c request fuses (default: the model's own)
    brief: str | None = Field(default=None, max_length=200_000)  # extra: a document only the sharers read

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])

    @property
    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _some_text(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.content.strip() for m in v if m.role == "user"):
            raise ValueError("messages need at least one non-empty user message")
        return v


class CompletionRequest(_Sampling):
    prompt: str = Field(min_length=1)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt is empty")
        return v


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def completion_body(kind: str, ident: str, created: int, model: str, text: str, finish: str, usage: Usage) -> dict:
    """A whole (non-streamed) chat or text completion, as OpenAI returns it."""
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
              if kind == "chat" else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
    return {"id": ident, "object": "chat.completion" if kind == "chat" else "text_completion", "created": created,
            "model": model, "choices": [choice], "usage": usage.model_dump()}


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:  # fmt: skip
    """The error shape OpenAI clients parse."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ApiError(Exception):
    """An error for the client: its HTTP status and the OpenAI-style body fields."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
