"""Tabby's API, so Tabby's editor extensions work against zen-coder: /v1/completions with
`segments` (the same path as OpenAI's; the body tells them apart), /v1/events (which completions
were shown, accepted or dismissed: counted in the metrics) and /v1/health.

The context the extension sends (declarations of the symbols near the cursor, snippets of
recently changed and opened files) joins the server's own repository context in the prompt;
the clipboard is left out (it is rarely code of this file). Without a repository of its own,
the server names the repository as mining names the `git_url` (owner/name), for the prompt and
the model's repository channel."""

from __future__ import annotations

import os
import platform
import uuid
from typing import Any

from zen_coder import __version__
from zen_coder.history.sources import RepoSpec
from zen_coder.inference.prompts import Prompt, PromptParts
from zen_coder.inference.stopping import CutOff
from zen_coder.serving.backends import TextRequest
from zen_coder.serving.schemas import TabbyCompletion, TabbyEvent, parse
from zen_coder.serving.service import Call, Service, snippets_from_client

EVENT_TYPES = ("view", "select", "dismiss")  # Tabby's; any other is counted as "other"


def tabby_parts(body: TabbyCompletion) -> PromptParts:
    segments = body.segments
    files = [(item.filepath, item.body) for item in segments.declarations or []]
    for snippets in (
        segments.relevant_snippets_from_changed_files,
        segments.relevant_snippets_from_recently_opened_files,
    ):
        files += [(item.filepath, item.body) for item in snippets or []]
    return PromptParts(
        prefix=segments.prefix,
        suffix=segments.suffix,
        path=segments.filepath,
        language=body.language,
        repo=RepoSpec(segments.git_url).display_name() if segments.git_url else None,
        snippets=snippets_from_client(files),
    )


async def completion(service: Service, raw: dict[str, Any], call: Call) -> dict[str, Any]:
    body = parse(TabbyCompletion, raw)
    debug = body.debug_options
    parts = tabby_parts(body)
    max_tokens = service.max_tokens(None)
    if debug is not None and debug.raw_prompt is not None:
        prompt: Prompt | str = debug.raw_prompt
        service.check_raw_prompt(debug.raw_prompt, max_tokens)
        snippets = []
    else:
        retrieve = not (debug and debug.disable_retrieval_augmented_code_completion)
        built = service.fill_in_the_middle(parts, max_tokens, retrieve=retrieve)
        prompt, snippets = built, built.snippets
    request = TextRequest(
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=body.temperature or 0.0,
        seed=body.seed or 0,
        cutoff=CutOff(stop=service.prompt_format.stop, suffix=parts.suffix or ""),
        prefix=parts.prefix,
        client=call.client(body.user),
        language=service.language_of(parts.path, parts.language),
        repo=service.repo_name or parts.repo,
        time=service.time_of(parts.path),
    )
    result = await service.collect("tabby", [request], request.client, call.disconnected)
    answer: dict[str, Any] = {
        "id": f"cmpl-{uuid.uuid4()}",
        "choices": [{"index": 0, "text": result.choices[0].text}],
    }
    if debug is not None and (debug.return_prompt or debug.return_snippets):
        answer["debug_data"] = {
            **({"prompt": request.text} if debug.return_prompt else {}),
            **(
                {
                    "snippets": [
                        {"filepath": s.path, "body": s.text, "score": s.score} for s in snippets
                    ]
                }
                if debug.return_snippets
                else {}
            ),
        }
    return answer


def record_event(service: Service, raw: dict[str, Any]) -> None:
    event = parse(TabbyEvent, raw)
    kind = event.type if event.type in EVENT_TYPES else "other"
    service.metrics.events.labels(kind).inc()


def health(service: Service) -> dict[str, Any]:
    """Tabby's /v1/health: which model, on what machine, which version."""
    device = service.backend.identity().get("device", "cpu")
    return {
        "model": service.settings.model_name,
        "chat_model": service.settings.model_name,
        "device": device,
        "arch": platform.machine(),
        "cpu_info": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count() or 1,
        "cuda_devices": [],
        "version": {
            "build_date": "",
            "build_timestamp": "",
            "git_sha": "",
            "git_describe": f"zen-coder {__version__}",
        },
    }
