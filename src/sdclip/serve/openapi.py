"""The OpenAPI 3 description of the API, written by hand (the API is small; a generator would be a
dependency). tests/serve/test_serve_api.py checks every path and method here is served and vice versa."""

from __future__ import annotations

import sdclip
from sdclip.conventions.family import FAMILIES
from sdclip.conventions.presets import PRESETS
from sdclip.layout import LAYOUTS
from sdclip.serve.api import INT_RANGES, MAX_BATCH, MAX_LINES
from sdclip.serve.fields import MAX_NAMES
from sdclip.serve.view import MAX_STEPS
from sdclip.syntax import DIALECTS
from sdclip.tokenizer import NORMALIZATIONS


def _enum(values: object, doc: str) -> dict:
    return {"type": "string", "enum": list(values), "description": doc}  # type: ignore[call-overload]


def _json(ref: str) -> dict:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


_ERRORS = {
    "400": {"description": "bad input, naming the field (a syntax error carries its character position)",
            **_json("Error")},
    "403": {"description": "a Host header this server does not answer to (DNS rebinding guard; --allow-host)",
            **_json("Error")},
    "408": {"description": "the request body did not arrive within the server's body timeout", **_json("Error")},
    "413": {"description": "request body over the size limit", **_json("Error")},
    "503": {"description": "the request ran past the server's time limit", **_json("Error")},
}

_TEXT_PROPS = {
    "prompt": {"type": "string", "description": "the prompt, in the chosen syntax"},
    "syntax": _enum(DIALECTS, "prompt dialect (default: the preset's)"),
    "family": _enum(FAMILIES, "model family (default: the server's model's, else sd1); the T5 families need the "
                              "server's T5 tokenizer (GET /api/info: t5_tokenizer, needs_t5), the LLM families its "
                              "LLM tokenizer (llm_tokenizer, needs_llm)"),
    "layout": _enum(LAYOUTS, "long-prompt layout (default: the preset's)"),
    "normalize": _enum(NORMALIZATIONS, "tokenizer normalisation (default: the preset's)"),
    "preset": _enum(PRESETS, "compatibility preset (default a1111)"),
    **{
        name: {"type": ["integer", "null"], "minimum": lo, "maximum": hi}
        for name, (lo, hi) in INT_RANGES.items()
    },
    "embedding_names": {
        "type": "object",
        "maxProperties": MAX_NAMES,
        "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 75},
        "description": "textual-inversion names → vector counts (as `inspect --embedding-name NAME:N`)",
    },
}

_PROMPTS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_BATCH}]}

SPEC: dict = {
    "openapi": "3.1.0",
    "info": {
        "title": "sdclip serve",
        "version": sdclip.__version__,
        "description": "Stable Diffusion prompt inspection (no model) and, with --model, text-encoder conditioning.",
    },
    "paths": {
        "/api/inspect": {
            "post": {
                "summary": "the object `sdclip inspect --json` prints for the same prompt and options "
                           "(steps / step as --steps / --step)",
                "requestBody": {"required": True, **_json("ViewRequest")},
                "responses": {"200": {"description": "the inspect object", **_json("Inspect")}, **_ERRORS},
            }
        },
        "/api/view": {
            "post": {
                "summary": "what the page draws: the inspect object of the text in force at `step` plus readable rows",
                "requestBody": {"required": True, **_json("ViewRequest")},
                "responses": {
                    "200": {
                        "description": "{inspect, view}",
                        "content": {"application/json": {"schema": {
                            "type": "object",
                            "properties": {"inspect": {"$ref": "#/components/schemas/Inspect"}, "view": {"type": "object"}},
                            "required": ["inspect", "view"],
                        }}},
                    },
                    **_ERRORS,
                },
            }
        },
        "/api/tokenize": {
            "post": {
                "summary": "token ids without BOS/EOS, as `sdclip tokenize`",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {
                        "text": {"type": "string"},
                        "lines": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_LINES},
                        "normalize": _enum(NORMALIZATIONS, "default openclip (the reference)"),
                    },
                    "additionalProperties": False,
                }}}},
                "responses": {
                    "200": {"description": "ids: one list for text, a list per line for lines", "content": {
                        "application/json": {"schema": {"type": "object", "properties": {"ids": {"type": "array"}}}}
                    }},
                    **_ERRORS,
                },
            }
        },
        "/api/encode": {
            "post": {
                "summary": "encode with the server's model (--model): diffusers keyword tensors",
                "security": [{"bearer": []}],
                "parameters": [{
                    "name": "format", "in": "query", "required": False,
                    "schema": {"type": "string", "enum": ["safetensors", "json"], "default": "safetensors"},
                }],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {"prompt": _PROMPTS, "negative": {"oneOf": [*_PROMPTS["oneOf"], {"type": "null"}]}},
                    "required": ["prompt"],
                    "additionalProperties": False,
                }}}},
                "responses": {
                    "200": {
                        "description": "prompt_embeds, negative_prompt_embeds (+ pooled for SDXL) as safetensors "
                                       "(warnings in its metadata and the X-Sdclip-Warnings header, a JSON list), "
                                       "or a JSON summary (shapes, token counts, dropped text, warnings) with "
                                       "?format=json",
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                            "application/json": {"schema": {"type": "object"}},
                        },
                    },
                    "401": {"description": "missing or wrong bearer token (server started with --token)", **_json("Error")},
                    "404": {"description": "no model loaded", **_json("Error")},
                    **_ERRORS,
                },
            }
        },
        "/api/info": {
            "get": {
                "summary": "server defaults, choices and limits",
                "responses": {"200": {"description": "info", "content": {"application/json": {"schema": {"type": "object"}}}}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this description",
                "responses": {"200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}}},
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "position": {"type": ["integer", "null"]}},
                "required": ["error", "position"],
            },
            "ViewRequest": {
                "type": "object",
                "properties": {
                    **_TEXT_PROPS,
                    "steps": {"type": "integer", "minimum": 1, "maximum": MAX_STEPS, "default": 20},
                    "step": {"type": "integer", "minimum": 1, "maximum": MAX_STEPS, "default": 1},
                },
                "required": ["prompt"],
                "additionalProperties": False,
            },
            "Inspect": {
                "type": "object",
                "description": "the stable `sdclip inspect --json` object (see the README's contracts)",
                "properties": {
                    "rows": {"type": "array", "items": {"type": "object", "properties": {
                        "ids": {"type": "array", "items": {"type": "integer"}},
                        "weights": {"type": "array", "items": {"type": "number"}},
                    }}},
                    "tokens": {"type": "integer"},
                    "capacity": {"type": "integer"},
                    "dropped": {"type": "string"},
                    "family": {"type": "string"},
                    "syntax": {"type": "string"},
                    "layout": {"type": "string"},
                    "normalize": {"type": "string"},
                    "combine": {"type": "string", "enum": ["single", "and", "blend", "concat"]},
                    "parts": {"type": "array", "items": {"type": "object"}},
                    "schedule": {"type": "object", "description": "scheduled prompts only: step, steps, text, entries"},
                    "t5": {"type": "object", "description": "SD3 / Flux only: the T5 sequence's count, length, limit"},
                },
                "required": ["rows", "tokens", "capacity", "dropped", "family", "syntax", "layout", "normalize",
                             "combine", "parts"],
            },
        },
    },
}
