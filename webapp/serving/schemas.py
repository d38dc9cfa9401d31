"""Request bodies of the OpenAI-compatible routes, validated by pydantic with the caps in settings.

Fields follow OpenAI's API reference (Chat Completions and Completions). Accepted and used:
``model``, ``messages`` / ``prompt``, ``max_tokens`` (or ``max_completion_tokens``),
``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, ``stream``, ``stream_options``. Other
fields OpenAI defines are ignored when they only tune a server (``user``, ``store``, ...);
those that would change the answer and that Rewardloop does not do (tools, logprobs,
penalties, ``logit_bias``, a JSON ``response_format``) are refused with a 400 naming them,
rather than silently ignored. Booleans (``stream``, ``stream_options.include_usage``) are strict
JSON ``true``/``false``: ``"yes"``, ``"false"``, ``1`` are refused with a 400 naming the field
rather than read as a boolean (pydantic's lax mode would take ``"yes"`` as true). Numbers are
JSON numbers: ``true`` or ``"8"`` for ``max_tokens``, ``n``, ``seed``, ``temperature`` or ``top_p``
is a 400 naming the field (lax mode read ``"max_tokens": true`` as 1), and the integers are whole
(``8``, not ``8.0``).
"""

from __future__ import annotations

from typing import Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator, model_validator

UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logprobs", "top_logprobs", "logit_bias",
               "presence_penalty", "frequency_penalty", "best_of", "echo", "suffix")


MODEL_PATTERN = r"^[-a-zA-Z0-9_]{1,50}(@[0-9]{1,9})?$"  # a project's slug, or slug@N for its version N


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool = False


class _Params(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=80, pattern=MODEL_PATTERN)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: StrictFloat = Field(default=1.0, ge=0, le=2)
    top_p: StrictFloat = Field(default=1.0, gt=0, le=1)
    n: StrictInt = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: StrictInt | None = Field(default=None, ge=-(2**63), lt=2**63)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _caps(self):
        extra = self.model_extra or {}
        for name in UNSUPPORTED:
            value = extra.get(name)
            if value not in (None, False, 0, 0.0, [], {}):
                raise ValueError(f"{name} is not supported by this server")
        fmt = extra.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type", "text") != "text":
            raise ValueError("response_format: only text is supported")
        cap = settings.REWARDLOOP_SERVE_MAX_TOKENS
        if self.tokens > cap:
            raise ValueError(f"max_tokens: at most {cap}")
        if self.n > settings.REWARDLOOP_SERVE_MAX_N:
            raise ValueError(f"n: at most {settings.REWARDLOOP_SERVE_MAX_N}")
        return self

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            raise ValueError("up to 4 stop sequences of 1 to 64 characters")
        return stops

    @property
    def tokens(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 16

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling(self) -> dict:
        return {"max_tokens": self.tokens, "temperature": self.temperature, "top_p": self.top_p, "n": self.n,
                "stop": self.stop, "seed": self.seed}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatIn(_Params):
    messages: list[Message] = Field(min_length=1, max_length=256)

    @model_validator(mode="after")
    def _length(self):
        if sum(len(m.text()) for m in self.messages) > settings.REWARDLOOP_SERVE_MAX_PROMPT_CHARS:
            raise ValueError(f"messages: at most {settings.REWARDLOOP_SERVE_MAX_PROMPT_CHARS} characters in all")
        if any("\x00" in m.text() for m in self.messages):
            raise ValueError("messages: a NUL character")
        return self

    def chat(self) -> list[dict]:
        # "developer" is OpenAI's newer name for the system role; chat templates know "system".
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionIn(_Params):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("send one prompt per request")
            value = value[0]
        if not value:
            raise ValueError("the prompt is empty")
        if len(value) > settings.REWARDLOOP_SERVE_MAX_PROMPT_CHARS:
            raise ValueError(f"at most {settings.REWARDLOOP_SERVE_MAX_PROMPT_CHARS} characters")
        if "\x00" in value:
            raise ValueError("a NUL character")
        return value
