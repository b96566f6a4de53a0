"""The report API's OpenAPI 3.1 document, served at ``/api/v1/openapi.json``.

It says what the handler does, answer by answer: tests/intake/test_schemathesis.py runs
Schemathesis against the running listener with every check, and the 422 answers that a schema
cannot foresee (a string that is not a web address) are spelt out here as such.
"""

from __future__ import annotations

from typing import Any

from intake.idempotency import IDEMPOTENCY_KEY, KEY_PATTERN, MAX_KEY
from intake.webreport import MAX_DESCRIPTION, MAX_EMAIL, MAX_SEEN_WHERE, MAX_URL, MAX_URLS

#: An e-mail address as the API takes it (the form is more lenient with what people type):
#: no spaces, controls, quotes or brackets, one @, a dot in the domain. The same regular
#: expression in Python and ECMA-262, so that the document and the handler agree exactly.
_ATOM = r'[^@\x00-\x20\x7f<>"(),;:\\\[\]]'
EMAIL_PATTERN = rf"^{_ATOM}{{1,64}}@{_ATOM}+\.{_ATOM}+$"

#: Field-keyed message keys the API answers 422 with, as ``{"fields": {field: key}}``.
FIELD_MESSAGES = {
    "required": "`urls` is empty, or `urls[N]` is blank",
    "not_a_list": "`urls` is not an array of strings",
    "too_many": f"more than {MAX_URLS} URLs",
    "too_long": "longer than the field allows",
    "not_url": "`urls[N]` is no web address a person could visit (a word such as `hello`, a "
               "scheme other than http(s), a host under no public suffix, a NUL)",
    "not_text": "not a string, or it holds a NUL",
    "not_email": "`email` is not an e-mail address",
    "not_boolean": "`consent` is not true or false",
    "consent_needed": "`email` is given and `consent` is false",
    "not_an_object": "`reporter` is not an object with `email` and `consent`",
    "not_a_language": "`language` is not one of the listed languages",
    "unknown_field": "a member the report does not have",
    "key_reused": f"the `{IDEMPOTENCY_KEY}` was used with another report",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before sending again.",
                                "required": True,
                                "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
_ERROR = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {
        "error": {"type": "string", "description": "What went wrong, in English."},
        "fields": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "On 400 and 422: a message key per field (or header) at "
                                  "fault: " + "; ".join(f"`{key}`: {text}" for key, text
                                                        in FIELD_MESSAGES.items()) + "."},
    },
}


def _error(description: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if headers:
        answer["headers"] = headers
    return answer


def _text(limit: int, description: str) -> dict[str, Any]:
    return {"type": ["string", "null"], "maxLength": limit, "description": description}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "hotline-gateway report API", "version": "1",
                 "description": "Report URLs where you saw child sexual abuse material. Send "
                                "addresses only, never images. A report is acknowledged (201) "
                                "only once it is stored. Without an Idempotency-Key every "
                                "POST is a report of its own. The API allows no cross-origin "
                                "use from browsers (no CORS)."},
        "paths": {"/api/v1/reports": {"post": {
            "operationId": "createReport",
            "parameters": [{
                "name": IDEMPOTENCY_KEY, "in": "header", "required": False,
                "description": f"1 to {MAX_KEY} visible ASCII characters (a random UUID is "
                               "a good key). A retry with the same key and the same report "
                               "returns the first reference instead of storing it twice; "
                               "the same key with another report within 24 hours gets 422 "
                               "(`key_reused`); any other value 400. Without a key, every "
                               "POST is a report of its own.",
                "schema": {"type": "string", "pattern": KEY_PATTERN}}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Report"},
                "examples": {"report": {"summary": "Two addresses, anonymously",
                                        "value": {"urls": ["https://example.test/album/7",
                                                           "www.example.test/p?id=3"],
                                                  "seen_where": "a link in a chat group",
                                                  "language": "en"}}}}}},
            "responses": {
                "201": {"description": "Stored; the report's reference.",
                        "content": {"application/json": {"schema": {
                            "type": "object", "required": ["reference"],
                            "additionalProperties": False,
                            "properties": {"reference": {"type": "string"}}}}}},
                "400": _error(f"The body is not JSON, or not a JSON object; or the "
                              f"{IDEMPOTENCY_KEY} is not 1 to {MAX_KEY} visible ASCII "
                              f"characters (`fields` names it: `not_a_key`)."),
                "413": _error("The body is larger than the server accepts (64 KiB unless "
                              "configured otherwise): a report at every schema limit can "
                              "exceed it."),
                "415": _error("The body is not sent as application/json."),
                "422": _error("Invalid fields; `fields` names each one with a message key. "
                              "A report the schema allows can still be refused here: a URL "
                              "that is no web address (`not_url`), an e-mail address without "
                              "consent (`consent_needed`), a blank URL, text with a NUL, an "
                              "Idempotency-Key reused for another report (`key_reused`)."),
                "429": _error("Too many reports from this client; wait Retry-After seconds.",
                              headers=_RETRY_AFTER),
                "503": _error("Not stored this time; try again after Retry-After seconds.",
                              headers=_RETRY_AFTER),
            },
        }}},
        "components": {"schemas": {
            "Report": {
                "type": "object", "additionalProperties": False, "required": ["urls"],
                "properties": {
                    "urls": {"type": "array", "minItems": 1, "maxItems": MAX_URLS,
                             "description": "Web addresses as you saw them; each must be "
                                            "one a person could visit (else 422 `not_url`).",
                             "items": {"type": "string", "minLength": 1,
                                       "maxLength": MAX_URL}},
                    "description": _text(MAX_DESCRIPTION, "What you saw (null: nothing)."),
                    "seen_where": _text(MAX_SEEN_WHERE, "Where you came across the "
                                                        "addresses (null: not said)."),
                    "reporter": {
                        "type": ["object", "null"], "additionalProperties": False,
                        "description": "How to reach you, if you wish (null: anonymous).",
                        "properties": {
                            "email": {"type": ["string", "null"], "pattern": EMAIL_PATTERN,
                                      "maxLength": MAX_EMAIL,
                                      "description": "An address to reach you at (null: "
                                                     "none)."},
                            "consent": {"type": "boolean",
                                        "description": "May the hotline contact you? "
                                                       "Default true when an e-mail is "
                                                       "given; false with an e-mail is "
                                                       "422 `consent_needed`."}}},
                    "language": {"enum": ["nl", "fr", "de", "en", None],
                                 "description": "The language to answer you in (null or "
                                                "absent: en)."},
                },
            },
            "Error": _ERROR,
        }},
    }
