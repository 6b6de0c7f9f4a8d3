"""The request body: the Hugging Face Inference API fill-mask body, checked before it is queued.

    {"inputs": "text with [MASK]" | ["text", ...],
     "parameters": {"top_k": 5, "targets": ["word", ...], "joint": false, "truncation": false}}

Everything a request can get wrong without running the model is caught here, so that a bad request
never reaches a batch shared with others. What only the tokenizer can see (a text too long in
tokens, a target the vocabulary cannot spell) fails in the batch, which then retries per request.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import DeniroError
from ..runtime import check_top_k, no_mask_message, validate_texts
from .batcher import FillParams
from .config import ServeConfig

PARAMETERS = ("top_k", "targets", "joint", "truncation")
TOP_LEVEL = ("inputs", "parameters", "options")  # "options" (wait_for_model, use_cache): accepted, unused
EXAMPLE = '{"inputs": "This is a great [MASK]!", "parameters": {"top_k": 5}}'


class BadRequest(Exception):
    """A client mistake: the HTTP status and a message naming the problem and the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FillRequest:
    texts: list[str]
    single: bool  # "inputs" was one string
    params: FillParams


def too_large(size: int | None, limit: int) -> BadRequest:
    """size: the declared Content-Length, or None for a streamed body cut off past the limit."""
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return BadRequest(413, f"body is {what}; this server takes at most {limit} (--max-body-bytes)")


def parse_body(raw: bytes, config: ServeConfig, mask_token: str) -> FillRequest:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(400, f"body is not valid JSON ({exc}); send e.g. {EXAMPLE}") from None
    if not isinstance(body, dict):
        raise BadRequest(422, f"body must be a JSON object, got {type(body).__name__}; send e.g. {EXAMPLE}")
    unknown = sorted(set(body) - set(TOP_LEVEL))
    if unknown:
        raise BadRequest(422, f"unknown field(s) {', '.join(unknown)}; the body takes {', '.join(TOP_LEVEL)}")
    if "inputs" not in body:
        raise BadRequest(422, f'body has no "inputs"; send e.g. {EXAMPLE}')
    try:
        texts, single = validate_texts(body["inputs"], mask_token)
    except DeniroError as exc:
        raise BadRequest(422, f'"inputs": {exc}') from None
    check_texts(texts, config, mask_token)
    return FillRequest(texts, single, parse_parameters(body.get("parameters"), config))


def check_texts(texts: list[str], config: ServeConfig, mask_token: str) -> None:
    if len(texts) > config.max_texts_per_request:
        raise BadRequest(413, f'"inputs" has {len(texts)} texts; this server takes at most '
                              f"{config.max_texts_per_request} per request (--max-texts-per-request); "
                              f"split the list")
    for index, text in enumerate(texts):
        if len(text) > config.max_text_chars:
            raise BadRequest(413, f"text {index} is {len(text)} characters; this server takes at most "
                                  f"{config.max_text_chars} (--max-text-chars)")
        if mask_token not in text:
            raise BadRequest(422, no_mask_message(text, index, mask_token))


def parse_parameters(parameters, config: ServeConfig) -> FillParams:
    if parameters is None:
        return FillParams()
    if not isinstance(parameters, dict):
        raise BadRequest(422, f'"parameters" must be an object like {{"top_k": 5}}, '
                              f"got {type(parameters).__name__}")
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise BadRequest(422, f"unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(PARAMETERS)}")
    top_k = check_top_k(parameters.get("top_k", 5))  # DeniroError -> 422
    if top_k > config.max_top_k:
        raise BadRequest(422, f"top_k is {top_k}; this server returns at most {config.max_top_k} "
                              f"(--max-top-k)")
    flags = {name: parameters.get(name, False) for name in ("joint", "truncation")}
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise BadRequest(422, f"{name} must be true or false, got {value!r}")
    return FillParams(top_k, parse_targets(parameters.get("targets")), **flags)


def parse_targets(targets) -> tuple[str, ...] | None:
    if targets is None:
        return None
    words = [targets] if isinstance(targets, str) else targets
    if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise BadRequest(422, f"targets must be a non-empty list of non-empty strings, got {targets!r}")
    return tuple(words)
