"""The OpenAPI 3.1 schema of the server (written out: Starlette has no schema generator without
PyYAML) and a self-contained /docs page rendered from it (works offline, no CDN)."""
from __future__ import annotations

import html
import json

PREDICTION = {"type": "object", "properties": {
    "score": {"type": "number", "description": "probability over the whole vocabulary"},
    "token": {"oneOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}],
              "description": "token id (a list of piece ids for a multi-piece target)"},
    "token_str": {"type": "string"}, "sequence": {"type": "string", "description": "the text, filled"}}}
FILL_BODY = {"type": "object", "required": ["inputs"], "properties": {
    "inputs": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
               "description": "text(s) with [MASK] (case-sensitive) where a word should be predicted"},
    "parameters": {"type": "object", "properties": {
        "top_k": {"type": "integer", "minimum": 1, "default": 5},
        "targets": {"type": "array", "items": {"type": "string"},
                    "description": "rank only these words (several pieces: scored as a whole word)"},
        "joint": {"type": "boolean", "default": False,
                  "description": "deniro extra: fill all masks of a text together (greedy)"},
        "truncation": {"type": "boolean", "default": False,
                       "description": "deniro extra: keep a window around the masks of over-long texts"}}},
    "options": {"type": "object", "description": "Inference API options; accepted and ignored"}}}
ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}
FILL_ANSWER = ("One string with one mask: a list of predictions. Several masks: a list per mask. "
               "A list of texts: one such entry per text. joint=true: one {sequence, score, tokens, "
               "token_strs} per text.")


def error_response(what: str) -> dict:
    return {"description": what, "content": {"application/json": {"schema": ERROR}}}


def fill_operation(summary: str) -> dict:
    return {"summary": summary, "requestBody": {"required": True, "content": {"application/json": {
        "schema": FILL_BODY, "example": {"inputs": "This is a great [MASK]!", "parameters": {"top_k": 3}}}}},
        "responses": {
            "200": {"description": FILL_ANSWER, "content": {"application/json": {
                "schema": {"type": "array", "items": {"oneOf": [PREDICTION, {"type": "array"}]}}}}},
            "400": error_response("body is not JSON"),
            "413": error_response("too many texts, body too large or a text too long"),
            "422": error_response("invalid body or text (the message names the problem and the fix)"),
            "503": error_response("queue full or shutting down; see the Retry-After header")}}


def openapi_schema(version: str) -> dict:
    text = {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {"openapi": "3.1.0",
            "info": {"title": "deniro fill-mask server", "version": version,
                     "description": "Hugging Face Inference API fill-mask body, with dynamic batching."},
            "paths": {"/": {"post": fill_operation("Fill [MASK] (Inference API route)")},
                      "/fill": {"post": fill_operation("Fill [MASK]")},
                      "/health": {"get": {"summary": "200 once the model is loaded",
                                          "responses": {"200": {"description": "model, precision, device"}}}},
                      "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": text}}},
                      "/docs": {"get": {"summary": "this page", "responses": {"200": text}}}}}


def docs_page(schema: dict) -> str:
    rows = []
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            rows.append(f"<tr><td><code>{method.upper()} {html.escape(path)}</code></td>"
                        f"<td>{html.escape(op['summary'])}</td></tr>")
    body = json.dumps(FILL_BODY, indent=2)
    curl = """curl -s http://127.0.0.1:8000/ -H 'content-type: application/json' \\
  -d '{"inputs": "This is a great [MASK]!", "parameters": {"top_k": 3}}'"""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{schema['info']['title']}</title></head>"
            f"<body><h1>{schema['info']['title']} {schema['info']['version']}</h1>"
            f"<p>{schema['info']['description']} Schema: <a href='/openapi.json'>/openapi.json</a></p>"
            f"<table border='1' cellpadding='4'>{''.join(rows)}</table>"
            f"<h2>Request body</h2><pre>{html.escape(body)}</pre>"
            f"<h2>Answer</h2><p>{FILL_ANSWER}</p><h2>Example</h2><pre>{html.escape(curl)}</pre></body></html>")
