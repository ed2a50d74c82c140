"""llama.cpp's /infill, as llama.vim and llama.vscode call it: the text before the cursor is
`input_prefix` followed by `prompt` (the start of the cursor line), `input_extra` holds chunks of
other files, `n_indent` the indentation below which a line ends the completion; `n_predict` 0
(llama.vim sends its chunks so) only computes the prompt, which warms a native slot's cache for
the requests that follow with the same chunks. The answer has
llama.cpp's fields (`content`, `stop`, `tokens_cached`, `timings`, ...), or only those named in
`response_fields`, flattened by their path ("timings/prompt_n") as llama.cpp does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from zen_coder.inference.prompts import PromptParts
from zen_coder.inference.stopping import CutOff
from zen_coder.serving.backends import Piece, TextRequest
from zen_coder.serving.schemas import Infill, parse, stop_list
from zen_coder.serving.service import Call, Service, snippets_from_client

# llama.cpp's names for why a completion stopped.
STOP_TYPES = {"stop": "eos", "length": "limit", "cancelled": "none"}


def infill_request(service: Service, body: Infill, call: Call) -> TextRequest:
    prefix = body.input_prefix + body.prompt
    snippets = snippets_from_client([(chunk.filename, chunk.text) for chunk in body.input_extra])
    parts = PromptParts(prefix=prefix, suffix=body.input_suffix, snippets=snippets)
    max_tokens = service.max_tokens(None if body.n_predict < 0 else body.n_predict)
    built = service.fill_in_the_middle(parts, max_tokens)
    stop = stop_list(body.stop, service.settings.max_stop)
    return TextRequest(
        prompt=built,
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed or 0,
        cutoff=CutOff(
            stop=(*stop, *service.prompt_format.stop),
            indent=body.n_indent,
            suffix=body.input_suffix,
        ),
        prefix=prefix,
        client=call.client(body.user),
        repo=service.repo_name,
    )


async def infill(service: Service, raw: dict[str, Any], call: Call) -> Any:
    body = parse(Infill, raw)
    request = infill_request(service, body, call)
    if body.stream:
        return infill_events(service, request, body.t_max_predict_ms)
    predict = None if body.t_max_predict_ms is None else body.t_max_predict_ms / 1000
    result = await service.collect("infill", [request], request.client, call.disconnected, predict)
    choice = result.choices[0]
    full = answer(choice.last, choice.text, result.first_token_seconds, result.seconds)
    return select(full, body.response_fields)


def answer(last: Piece, content: str, first_seconds: float, seconds: float) -> dict[str, Any]:
    """llama.cpp's response: the prompt's "prompt_n" counts only the tokens computed, not those
    the prefix cache served; the prompt time is the time to the first token."""
    computed = last.prompt_tokens - last.cached_tokens
    prompt_ms = first_seconds * 1000
    predicted_ms = max(seconds - first_seconds, 0.0) * 1000
    return {
        "content": content,
        "stop": True,
        "stop_type": STOP_TYPES.get(last.finish_reason or "", "none"),
        "tokens_predicted": last.completion_tokens,
        "tokens_evaluated": last.prompt_tokens,
        "tokens_cached": last.cached_tokens,
        "truncated": False,
        "timings": {
            "prompt_n": computed,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / computed if computed else 0.0,
            "prompt_per_second": computed / first_seconds if first_seconds else 0.0,
            "predicted_n": last.completion_tokens,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": (
                predicted_ms / last.completion_tokens if last.completion_tokens else 0.0
            ),
            "predicted_per_second": (
                last.completion_tokens * 1000 / predicted_ms if predicted_ms else 0.0
            ),
        },
    }


def select(full: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """Only the `fields` asked for, each under its path ("timings/prompt_n"); all without."""
    if fields is None:
        return full
    chosen = {}
    for field in fields:
        value: Any = full
        for part in field.split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            chosen[field] = value
    return chosen


async def infill_events(
    service: Service, request: TextRequest, predict_ms: int | None
) -> AsyncIterator[str]:
    """llama.cpp's stream: `data: {"content": ..., "stop": false}` per piece, the last with
    `"stop": true` and the token counts; no [DONE]."""
    predict = None if predict_ms is None else predict_ms / 1000
    async for _, piece in service.run("infill", [request], request.client, None, predict):
        if piece.finish_reason is None:
            data: dict[str, Any] = {"content": piece.text, "stop": False}
        else:
            data = {**answer(piece, piece.text, 0.0, 0.0), "timings": {}}
        yield f"data: {json.dumps(data)}\n\n"
