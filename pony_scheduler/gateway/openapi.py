"""The gateway's API described in OpenAPI 3.1, served at GET /api/openapi.json.

It is what the fuzz test (tests/integration/test_gateway_fuzz.py) draws its requests from,
so it must list every route of gateway/api.py, with its parameters and answers.
"""

from __future__ import annotations

from typing import Any

from pony_scheduler.runstate import RUN_ID_MAX

_ERROR = {"$ref": "#/components/responses/Error"}


def _get(
    summary: str, *, params: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": summary, "content": {"application/json": {}}},
        "401": _ERROR,
        "403": _ERROR,
        "503": _ERROR,
    }
    responses.update(extra or {})
    return {
        "get": {
            "summary": summary,
            "parameters": params or [],
            "responses": responses,
            "security": [{"bearer": []}, {"peer": []}],
        }
    }


def _action(summary: str, status: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [_NAME],
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {
                status: {"description": summary, "content": {"application/json": {}}},
                "400": _ERROR,
                "401": _ERROR,
                "403": _ERROR,
                "404": _ERROR,
                "413": _ERROR,
                "503": _ERROR,
            },
            "security": [{"bearer": ["admin"]}, {"peer": []}],
        }
    }


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": RUN_ID_MAX},
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "pony-scheduler gateway",
        "version": "1",
        "description": "Every request needs the admin or read-only token "
        "(Authorization: Bearer) or, on gateway.api.sock, our own uid; "
        "changes need the admin scope.  See pb-gateway(1).",
    },
    "paths": {
        "/api/openapi.json": _get("This description"),
        "/api/health": _get("Liveness: status, service, version, pid, uptime"),
        "/api/status": _get("The gateway, the scheduler connection and the services"),
        "/api/jobs": _get(
            "Jobs by name: all, or a page of `limit` after `after`, with `next_after`",
            params=[
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                },
                {"name": "after", "in": "query", "schema": {"type": "string"}},
            ],
            extra={"400": _ERROR},
        ),
        "/api/jobs/{name}": _get("One job", params=[_NAME], extra={"404": _ERROR}),
        "/api/jobs/{name}/run": _action("Queue a run now", "202"),
        "/api/jobs/{name}/pause": _action("Pause a job", "200"),
        "/api/jobs/{name}/resume": _action("Resume a job", "200"),
        "/api/runs": _get(
            "Recent runs, newest first",
            params=[
                {"name": "job", "in": "query", "schema": {"type": "string"}},
                {
                    "name": "state",
                    "in": "query",
                    "schema": {
                        "enum": [
                            "queued",
                            "running",
                            "succeeded",
                            "failed",
                            "timed_out",
                            "interrupted",
                            "lost",
                            "skipped",
                            "expired",
                        ]
                    },
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
            ],
            extra={"400": _ERROR},
        ),
        "/api/runs/{id}": _get(
            "One run, with the end of its output",
            params=[_ID],
            extra={"400": _ERROR, "404": _ERROR},
        ),
        "/api/events": {
            "get": {
                "summary": "Server-sent events (text/event-stream); Last-Event-ID replays",
                "parameters": [
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "the stream", "content": {"text/event-stream": {}}},
                    "401": _ERROR,
                    "403": _ERROR,
                },
                "security": [{"bearer": []}, {"peer": []}],
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "gateway.token (admin) or gateway.read-token (read)",
            },
            "peer": {
                "type": "apiKey",
                "in": "header",
                "name": "X-Unix-Peer",
                "description": "Not a header: a process of the gateway's own user on "
                "gateway.api.sock needs no token (SO_PEERCRED)",
            },
        },
        "responses": {
            "Error": {
                "description": "an error",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["error", "status"],
                            "properties": {
                                "error": {"type": "string"},
                                "status": {"type": "integer"},
                            },
                        }
                    }
                },
            }
        },
    },
}
