"""Request bodies of the OpenAI-compatible gateway (pydantic) and its error type.

Standard OpenAI fields are accepted as the `openai` client sends them; unknown fields are ignored, except
`chat_template`, which is refused (400): the gateway renders prompts with its model's own template only.
`model` must be the served model's name (404 `model_not_found` otherwise, as OpenAI answers); omitted, it
is the served model. Extensions (send them with the client's `extra_body=`):
- `priority`: 'training' | 'evaluation' | 'reflection' (default: the `X-Priority` header, else 'evaluation');
- `min_policy_version`: wait until the served policy reaches this version (or time out with 504);
- `timeout_s`: per-request deadline, capped by the gateway's own request timeout;
- `top_k`: top-k sampling (0 or -1: off), as in vLLM;
- `return_token_ids`: add `prompt_token_ids` / `token_ids` to each choice;
- chat only: `chat_template_kwargs`: only the keys in `TEMPLATE_KWARGS` (`enable_thinking`: bool), passed
  to the chat template; any other key is refused (400) naming it.
"""
from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TEMPLATE_KWARGS: dict[str, type] = {"enable_thinking": bool}
"""The chat-template variables a request may set, and their types."""


class GatewayError(Exception):
    """An error answered as OpenAI-style JSON `{"error": {...}}` with HTTP `status` (`code`: the status, or a
    string code such as 'model_not_found')."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code or self.status}}


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int = Field(0, ge=-1)
    max_tokens: int | None = Field(None, ge=1)
    stop: Union[str, list[str]] | None = None
    seed: int | None = None
    stream: bool = False
    priority: str | None = None
    min_policy_version: int = Field(0, ge=0)
    timeout_s: float | None = Field(None, gt=0)
    return_token_ids: bool = False

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[int], list[str], list[list[int]]]
    logprobs: int | None = Field(None, ge=0, le=1)
    echo: bool = False

    def prompts(self) -> list[Union[str, list[int]]]:
        """One entry per prompt: text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: Union[str, list[ContentPart]] | None = None

    def as_template_message(self) -> dict[str, str]:
        if self.content is None or isinstance(self.content, str):
            return {"role": self.role, "content": self.content or ""}
        if any(part.type != "text" for part in self.content):
            raise GatewayError(400, "only text content parts are supported", param="messages")
        return {"role": self.role, "content": "".join(part.text or "" for part in self.content)}


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=0)
    chat_template_kwargs: dict[str, Any] | None = None
    chat_template: Any = None
    """Refused when given (see the module docstring); declared so that it is not silently ignored."""

    def template_kwargs(self) -> dict[str, Any]:
        """The request's chat-template variables, checked against `TEMPLATE_KWARGS`; GatewayError(400) otherwise."""
        if self.chat_template is not None:
            raise GatewayError(400, "chat_template: client-supplied chat templates are not accepted; the gateway "
                                    "renders with the served model's template", param="chat_template")
        given = self.chat_template_kwargs or {}
        for key, value in given.items():
            if key not in TEMPLATE_KWARGS:
                raise GatewayError(400, f"chat_template_kwargs.{key}: not accepted; allowed keys: "
                                        f"{', '.join(TEMPLATE_KWARGS)}", param=f"chat_template_kwargs.{key}")
            if not isinstance(value, TEMPLATE_KWARGS[key]):
                raise GatewayError(400, f"chat_template_kwargs.{key}: expected {TEMPLATE_KWARGS[key].__name__}, "
                                        f"got {type(value).__name__}", param=f"chat_template_kwargs.{key}")
        return dict(given)


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validate a decoded JSON body; a `GatewayError(400)` naming the first bad field otherwise."""
    if not isinstance(body, dict):
        raise GatewayError(400, f"request body must be a JSON object, got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ())) or None
        raise GatewayError(400, f"invalid field '{loc}': {err.get('msg')}", param=loc) from e
