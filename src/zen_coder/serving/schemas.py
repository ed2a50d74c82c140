"""The request bodies each client sends, validated: a field of the wrong type or out of range is
a 400 naming the field. Unknown fields are ignored (clients send many: penalties, samplers,
cache hints), so a client that sends more than it needs still works."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zen_coder.serving.security import ApiError

MULTILINE = Literal["single", "multi", "auto"]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(Body):
    include_usage: bool = False


class Sampling(Body):
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    user: str | None = Field(None, max_length=256)  # a newer request of this user cancels older


class Completion(Sampling):
    """OpenAI /v1/completions; `suffix` makes it fill-in-the-middle. zen-coder reads more
    fields: `path` and `language` of the edited file (its prompt layout and history channels),
    `multiline` (single, multi or auto), and vLLM's `ignore_eos` (no end of text, no end
    markers: benchmarks of models with random weights run to max_tokens)."""

    model: str | None = None
    prompt: str | list[str] = ""
    suffix: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    echo: bool = False
    logprobs: int | None = None
    path: str | None = None
    language: str | None = None
    multiline: MULTILINE | None = None
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens (benchmarks)


class TextPart(Body):
    type: str = "text"
    text: str = ""


class Message(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content if part.type == "text")
        return self.content or ""


class ChatCompletion(Sampling):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None


class ExtraChunk(Body):
    filename: str = ""
    text: str = ""


class Infill(Sampling):
    """llama.cpp's /infill as llama.vim and llama.vscode send it: the text before the cursor is
    `input_prefix` + `prompt` (the cursor line's start), `n_indent` the cursor line's
    indentation, `input_extra` chunks of other files."""

    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraChunk] = []
    prompt: str = ""
    n_predict: int = -1
    n_indent: int | None = Field(None, ge=0)
    stop: list[str] = []
    stream: bool = False
    id_slot: int | None = None
    response_fields: list[str] | None = None
    t_max_predict_ms: int | None = Field(None, ge=0)


class TabbyDeclaration(Body):
    filepath: str = ""
    body: str = ""


class TabbySnippet(Body):
    filepath: str = ""
    body: str = ""
    score: float = 0.0


class TabbySegments(Body):
    prefix: str = ""
    suffix: str | None = None
    filepath: str | None = None
    git_url: str | None = None
    declarations: list[TabbyDeclaration] | None = None
    relevant_snippets_from_changed_files: list[TabbySnippet] | None = None
    relevant_snippets_from_recently_opened_files: list[TabbySnippet] | None = None
    clipboard: str | None = None


class TabbyDebugOptions(Body):
    raw_prompt: str | None = None
    return_snippets: bool = False
    return_prompt: bool = False
    disable_retrieval_augmented_code_completion: bool = False


class TabbyCompletion(Body):
    language: str | None = None
    segments: TabbySegments
    user: str | None = Field(None, max_length=256)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    seed: int | None = None
    mode: str = "standard"
    debug_options: TabbyDebugOptions | None = None


class TabbyEvent(Body):
    type: str = Field(min_length=1, max_length=64)
    completion_id: str | None = None
    choice_index: int | None = None
    view_id: str | None = None
    elapsed: int | None = None


Parsed = TypeVar("Parsed", bound=BaseModel)


def parse(schema: type[Parsed], body: dict[str, Any]) -> Parsed:
    """`body` as `schema`, or a 400 naming the first field that is wrong and why."""
    try:
        return schema.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, f"field {where!r}: {first['msg']}") from None


def stop_list(stop: str | list[str] | None, limit: int) -> tuple[str, ...]:
    sequences = [stop] if isinstance(stop, str) else list(stop or [])
    if len(sequences) > limit:
        raise ApiError(400, f"{len(sequences)} stop sequences; at most {limit} are accepted")
    return tuple(sequence for sequence in sequences if sequence)
