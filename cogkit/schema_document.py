"""The fixed parts of a Cog model's OpenAPI document: paths, request and response
envelopes, validation errors (what FastAPI wrote in Cog's Python server, which
clients still read). schema.py adds the model's own Input and Output."""
from __future__ import annotations


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _ok(schema: dict) -> dict:
    return {"description": "Successful Response", "content": _json(schema)}


REF = "#/components/schemas/"
_422 = {"description": "Validation Error", "content": _json({"$ref": REF + "HTTPValidationError"})}
_PREFER = {"name": "prefer", "in": "header", "required": False, "schema": {"title": "Prefer", "type": "string"}}


def simple(method: str, summary: str, op: str, title: str) -> dict:
    return {method: {"summary": summary, "operationId": op, "responses": {"200": _ok({"title": title})}}}


def job_paths(train: bool) -> dict:
    noun, plural, verb = ("training", "trainings", "Train") if train else ("prediction", "predictions", "Predict")
    req, resp = REF + f"{noun.title()}Request", REF + f"{noun.title()}Response"
    id_param = {"name": f"{noun}_id", "in": "path", "required": True,
                "schema": {"type": "string", "title": f"{noun.title()} ID"}}
    responses = {"200": _ok({"$ref": resp}), "422": _422}
    return {
        f"/{plural}": {"post": {
            "summary": verb, "description": f"Run a single {noun} on the model",
            "operationId": f"{verb.lower()}_{plural}_post", "parameters": [_PREFER],
            "requestBody": {"content": _json({"$ref": req})}, "responses": responses}},
        f"/{plural}/{{{noun}_id}}": {"put": {
            "summary": f"{verb} Idempotent", "description": f"Run a single {noun} on the model (idempotent creation).",
            "operationId": f"{verb.lower()}_idempotent_{plural}__{noun}_id__put",
            "parameters": [id_param, _PREFER],
            "requestBody": {"required": True, "content": _json({"allOf": [{"$ref": req}],
                                                                "title": f"{noun.title()} Request"})},
            "responses": responses}},
        f"/{plural}/{{{noun}_id}}/cancel": {"post": {
            "summary": "Cancel", "description": f"Cancel a running {noun}",
            "operationId": f"cancel_{plural}__{noun}_id__cancel_post", "parameters": [id_param],
            "responses": {"200": _ok({"title": f"Response Cancel {plural.title()}  {noun.title()} Id  Cancel Post"}),
                          "422": _422}}},
    }


def _nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}


def request_response(prefix: str, input_key: str, output_key: str) -> dict:
    dt = {"type": "string", "format": "date-time"}
    inp = {"$ref": REF + input_key, "nullable": True}
    request = {"title": f"{prefix}Request", "type": "object", "properties": {
        "input": inp, "id": _nullable({"title": "Id", "type": "string"}),
        "created_at": _nullable({"title": "Created At", **dt}),
        "context": _nullable({"title": "Context", "additionalProperties": {"type": "string"}, "type": "object"}),
        "output_file_prefix": _nullable({"title": "Output File Prefix", "type": "string"}),
        "webhook": _nullable({"title": "Webhook", "type": "string", "maxLength": 65536, "minLength": 1,
                              "format": "uri"}),
        "webhook_events_filter": {"default": ["start", "output", "logs", "completed"],
                                  "items": {"$ref": REF + "WebhookEvent"}, "type": "array", "nullable": True},
    }}
    response = {"title": f"{prefix}Response", "type": "object", "properties": {
        "input": inp, "output": {"$ref": REF + output_key},
        "id": _nullable({"title": "Id", "type": "string"}),
        "version": _nullable({"title": "Version", "type": "string"}),
        "created_at": _nullable({"title": "Created At", **dt}),
        "started_at": _nullable({"title": "Started At", **dt}),
        "completed_at": _nullable({"title": "Completed At", **dt}),
        "logs": {"type": "string", "title": "Logs", "default": ""},
        "error": _nullable({"title": "Error", "type": "string"}),
        "status": {"$ref": REF + "Status", "nullable": True},
        "metrics": _nullable({"title": "Metrics", "additionalProperties": True, "type": "object"}),
    }}
    return {f"{prefix}Request": request, f"{prefix}Response": response}


def fixed_components() -> dict:
    return {
        "HTTPValidationError": {"title": "HTTPValidationError", "type": "object", "properties": {
            "detail": {"title": "Detail", "type": "array", "items": {"$ref": REF + "ValidationError"}}}},
        "ValidationError": {"title": "ValidationError", "type": "object", "required": ["loc", "msg", "type"],
                            "properties": {
                                "loc": {"title": "Location", "type": "array",
                                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                                "msg": {"title": "Message", "type": "string"},
                                "type": {"title": "Error Type", "type": "string"}}},
        "Status": {"title": "Status", "type": "string", "description": "An enumeration.",
                   "enum": ["starting", "processing", "succeeded", "canceled", "failed"]},
        "WebhookEvent": {"title": "WebhookEvent", "type": "string", "description": "An enumeration.",
                         "enum": ["start", "output", "logs", "completed"]},
    }
