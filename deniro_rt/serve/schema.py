"""The request and answer bodies (pydantic v2): the Hugging Face Inference API fill-mask body, from
which FastAPI generates /openapi.json and its 422s; and the offline /docs page rendered from that
schema (no CDN, no script)."""

from __future__ import annotations

import html
import json
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

EXAMPLE = {"inputs": "This is a great [MASK]!", "parameters": {"top_k": 3}}
CURL = f"curl -s http://127.0.0.1:8000/ -H 'content-type: application/json' \\\n  -d '{json.dumps(EXAMPLE)}'"


def readable_texts(value, what: str):
    """The value (a text or a list) if its texts are ones a tokenizer can take: not blank, encodable as
    UTF-8 (JSON allows a lone surrogate)."""
    for index, text in enumerate([value] if isinstance(value, str) else value or []):
        if not text.strip():
            raise ValueError(f"{what} {index} is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{what} {index} has a lone surrogate at character {exc.start} "
                f"(an unpaired \\ud800-\\udfff escape); send valid UTF-8 text"
            ) from None
    return value


Targets = Annotated[list[StrictStr] | StrictStr, AfterValidator(lambda value: readable_texts(value, "target"))]
Texts = Annotated[StrictStr | list[StrictStr], AfterValidator(lambda value: readable_texts(value, "text"))]


class Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: StrictInt = Field(5, ge=1, description="predictions per mask (at most the server's --max-top-k)")
    targets: Targets | None = Field(
        None, min_length=1, description="rank only these words (several pieces: scored as a whole word)"
    )
    joint: StrictBool = Field(False, description="deniro extra: fill all masks of a text together (greedy)")
    truncation: StrictBool = Field(False, description="deniro extra: keep a window around the masks of over-long texts")


class FillBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})
    inputs: Texts = Field(description="text(s) with [MASK] (case-sensitive) where a word should be predicted")
    parameters: Parameters = Field(default_factory=Parameters)
    options: dict | None = Field(None, description="Inference API options (wait_for_model, ...): accepted, unused")


class Prediction(BaseModel):
    score: float = Field(description="probability over the whole vocabulary")
    token: int | list[int] = Field(description="token id (a list of piece ids for a multi-piece target)")
    token_str: str
    sequence: str = Field(description="the text, filled")


class JointFill(BaseModel):
    sequence: str
    score: float
    tokens: list[int]
    token_strs: list[str]


# One string with one mask: a list of predictions. Several masks: a list per mask. A list of texts: one
# such entry per text (texts with one mask and with several mixed). joint=true: one JointFill per text.
PerText = list[Prediction] | list[list[Prediction]]
FillAnswer = list[Prediction] | list[PerText] | JointFill | list[JointFill]


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong and how to fix it")


def docs_page(schema: dict) -> str:
    info, rows = schema["info"], []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            rows.append(
                f"<tr><td><code>{method.upper()} {html.escape(path)}</code></td>"
                f"<td>{html.escape(operation.get('summary', ''))}</td></tr>"
            )
    models = json.dumps(schema.get("components", {}).get("schemas", {}), indent=2)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{info['title']}</title></head>"
        f"<body><h1>{info['title']} {info['version']}</h1>"
        f"<p>{html.escape(info.get('description', ''))} Schema: <a href='/openapi.json'>/openapi.json</a></p>"
        f"<table border='1' cellpadding='4'>{''.join(rows)}</table>"
        f"<h2>Example</h2><pre>{html.escape(CURL)}</pre>"
        f"<h2>Bodies</h2><pre>{html.escape(models)}</pre></body></html>"
    )
