"""The report API's OpenAPI 3.1 document, served at ``/api/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

from intake.webreport import MAX_DESCRIPTION, MAX_EMAIL, MAX_SEEN_WHERE, MAX_URL, MAX_URLS

_ERROR = {"type": "object", "required": ["error"],
          "properties": {"error": {"type": "string"},
                         "fields": {"type": "object",
                                    "additionalProperties": {"type": "string"}}}}


def openapi_document() -> dict[str, Any]:
    def error(description: str) -> dict[str, Any]:
        return {"description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": "hotline-gateway report API", "version": "1",
                 "description": "Report URLs where you saw child sexual abuse material. Send "
                                "addresses only, never images. A report is acknowledged (201) "
                                "only once it is stored."},
        "paths": {"/api/v1/reports": {"post": {
            "operationId": "createReport",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "description": "The same key with the same report returns the "
                                           "first reference instead of storing it twice.",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 128}}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Report"}}}},
            "responses": {
                "201": {"description": "Stored; the report's reference.",
                        "content": {"application/json": {"schema": {
                            "type": "object", "required": ["reference"],
                            "properties": {"reference": {"type": "string"}}}}}},
                "400": error("Not JSON, or not an object."),
                "413": error("The body is larger than the server accepts."),
                "422": error("Invalid fields; `fields` names each one."),
                "429": error("Too many reports from this client; see Retry-After."),
                "503": error("Not stored this time; try again later."),
            },
        }}},
        "components": {"schemas": {
            "Report": {
                "type": "object", "additionalProperties": False, "required": ["urls"],
                "properties": {
                    "urls": {"type": "array", "minItems": 1, "maxItems": MAX_URLS,
                             "items": {"type": "string", "minLength": 1,
                                       "maxLength": MAX_URL}},
                    "description": {"type": ["string", "null"],
                                    "maxLength": MAX_DESCRIPTION},
                    "seen_where": {"type": ["string", "null"], "maxLength": MAX_SEEN_WHERE},
                    "reporter": {"type": ["object", "null"], "additionalProperties": False,
                                 "properties": {
                                     "email": {"type": ["string", "null"], "format": "email",
                                               "maxLength": MAX_EMAIL},
                                     "consent": {"type": "boolean",
                                                 "description": "May the hotline contact "
                                                                "you? Default true when an "
                                                                "e-mail is given."}}},
                    "language": {"enum": ["nl", "fr", "de", "en"]},
                },
            },
            "Error": _ERROR,
        }},
    }
