"""OpenAI's /v1/completions (with `suffix`: fill-in-the-middle in the model's own layout) and
/v1/chat/completions, whole or streamed as server-sent events ending in `data: [DONE]`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from zen_coder.inference.prompts import PromptParts
from zen_coder.inference.stopping import CutOff
from zen_coder.serving.backends import ChatRequest, Piece, TextRequest
from zen_coder.serving.schemas import ChatCompletion, Completion, parse, stop_list
from zen_coder.serving.security import ApiError
from zen_coder.serving.service import Call, Choice, Service

DONE = "data: [DONE]\n\n"


def completion_requests(service: Service, body: Completion, call: Call) -> list[TextRequest]:
    """One request per choice. A `suffix` (or a `path`) makes it fill-in-the-middle: the prompt
    is the text before the cursor, built into the model's layout with repository context, and
    the completion ends by the editor's line rules ("auto" unless `multiline` says otherwise).
    Without them the prompt is continued as it is, as OpenAI does."""
    if body.echo or body.logprobs is not None:
        raise ApiError(400, "echo and logprobs are not supported; leave them out")
    prompt = single_prompt(body.prompt)
    stop = stop_list(body.stop, service.settings.max_stop)
    max_tokens = service.max_tokens(body.max_tokens)
    service.check_n(body.n)
    if body.suffix is not None or body.path is not None:
        parts = PromptParts(
            prefix=prompt, suffix=body.suffix, path=body.path, language=body.language
        )
        built = service.fill_in_the_middle(parts, max_tokens)
        text, language = built, service.language_of(body.path, body.language)
        ends = () if body.ignore_eos else service.prompt_format.stop
        cutoff = CutOff(
            stop=(*stop, *ends), multiline=body.multiline or "auto", suffix=body.suffix or ""
        )
    else:
        service.check_raw_prompt(prompt, max_tokens)
        text, language = prompt, body.language
        cutoff = CutOff(stop=stop, multiline=body.multiline or "multi")
    return [
        TextRequest(
            prompt=text,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=(body.seed or 0) + index,
            cutoff=cutoff,
            prefix=prompt,
            client=call.client(body.user),
            language=language,
            repo=service.repo_name,
            time=service.time_of(body.path),
            ignore_eos=body.ignore_eos,
        )
        for index in range(body.n)
    ]


def single_prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) != 1:
        raise ApiError(400, f"{len(prompt)} prompts in one request; send one prompt per request")
    return prompt[0]


async def completions(service: Service, raw: dict[str, Any], call: Call) -> Any:
    body = parse(Completion, raw)
    requests = completion_requests(service, body, call)
    envelope = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": service.settings.model_name,
    }
    client = requests[0].client
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return completion_events(service, requests, client, call, envelope, usage)
    result = await service.collect("completions", requests, client, call.disconnected)
    choices = [
        {
            "index": choice.index,
            "text": choice.text,
            "finish_reason": choice.last.finish_reason,
            "logprobs": None,
        }
        for choice in result.choices
    ]
    return {**envelope, "choices": choices, "usage": usage_of(result.choices)}


async def completion_events(
    service: Service,
    requests: list[TextRequest],
    client: str | None,
    call: Call,
    envelope: dict[str, Any],
    include_usage: bool,
) -> AsyncIterator[str]:
    last: list[Choice] = []
    async for index, piece in service.run("completions", requests, client):
        choice = {
            "index": index,
            "text": piece.text,
            "finish_reason": piece.finish_reason,
            "logprobs": None,
        }
        if piece.finish_reason is not None:
            last.append(Choice(index, "", piece))
        yield event({**envelope, "choices": [choice]})
    if include_usage:
        yield event({**envelope, "choices": [], "usage": usage_of(last)})
    yield DONE


def chat_requests(service: Service, body: ChatCompletion, call: Call) -> list[ChatRequest]:
    service.check_n(body.n)
    messages = [{"role": message.role, "content": message.text()} for message in body.messages]
    asked = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    max_tokens = service.max_tokens(asked)
    service.check_raw_prompt("\n".join(message["content"] for message in messages), max_tokens)
    return [
        ChatRequest(
            messages=messages,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=(body.seed or 0) + index,
            stop=stop_list(body.stop, service.settings.max_stop),
            client=call.client(body.user),
        )
        for index in range(body.n)
    ]


async def chat_completions(service: Service, raw: dict[str, Any], call: Call) -> Any:
    body = parse(ChatCompletion, raw)
    requests = chat_requests(service, body, call)
    envelope = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": service.settings.model_name,
    }
    client = requests[0].client
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return chat_events(service, requests, client, envelope, usage)
    result = await service.collect("chat", requests, client, call.disconnected)
    choices = [
        {
            "index": choice.index,
            "message": {"role": "assistant", "content": choice.text},
            "finish_reason": choice.last.finish_reason,
            "logprobs": None,
        }
        for choice in result.choices
    ]
    return {
        **envelope,
        "object": "chat.completion",
        "choices": choices,
        "usage": usage_of(result.choices),
    }


async def chat_events(
    service: Service,
    requests: list[ChatRequest],
    client: str | None,
    envelope: dict[str, Any],
    include_usage: bool,
) -> AsyncIterator[str]:
    chunk = {**envelope, "object": "chat.completion.chunk"}
    for index in range(len(requests)):
        delta = {"role": "assistant", "content": ""}
        yield event({**chunk, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
    last: list[Choice] = []
    async for index, piece in service.run("chat", requests, client):
        delta = {"content": piece.text} if piece.text else {}
        if piece.finish_reason is not None:
            last.append(Choice(index, "", piece))
        choice = {"index": index, "delta": delta, "finish_reason": piece.finish_reason}
        yield event({**chunk, "choices": [choice]})
    if include_usage:
        yield event({**chunk, "choices": [], "usage": usage_of(last)})
    yield DONE


def usage_of(choices: list[Choice]) -> dict[str, Any]:
    """OpenAI's usage: the prompt counted once (every choice reads the same one), the
    completions summed, and the prompt tokens the prefix cache served."""
    first: Piece = choices[0].last if choices else Piece("")
    completion = sum(choice.last.completion_tokens for choice in choices)
    return {
        "prompt_tokens": first.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": first.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": first.cached_tokens},
    }


def event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"
