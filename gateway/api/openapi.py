"""The OpenAPI 3.1 document of the HTTP API; the job spec schema comes from the pydantic model."""

from __future__ import annotations

from functools import cache
from typing import Any

from .. import __version__
from ..spec import JobSpec

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_JOB_REF = {"$ref": "#/components/schemas/Job"}
_ID = {"name": "job_id", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}}
_STATES = ["accepted", "staging", "pending", "running", "ready", "collecting", "succeeded",
           "failed", "cancelled", "timed_out"]
_REASONS = ["completed", "notebook_error", "job_error", "launch_failed", "out_of_memory",
            "node_failure", "preempted", "time_limit", "user_cancelled", "idle", "staging", "lost"]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _job_schema() -> dict[str, Any]:
    nullable_string = {"type": ["string", "null"]}
    return {
        "type": "object",
        "required": ["id", "kind", "name", "state", "created_at"],
        "properties": {
            "id": {"type": "string"}, "kind": {"enum": ["notebook", "lab"]},
            "name": {"type": "string"}, "cluster": {"type": "string"},
            "state": {"enum": _STATES}, "pending_reason": nullable_string,
            "reason": {"enum": [*_REASONS, None]}, "message": nullable_string,
            "slurm_job_id": nullable_string, "node": nullable_string,
            "exit_code": {"type": ["integer", "null"],
                          "description": "the batch script's exit code as Slurm reported it"},
            "partition": {"type": "string"}, "cpus": {"type": "integer"},
            "gpus": {"type": "integer"}, "gpu_type": nullable_string, "memory": nullable_string,
            "time": {"type": "string"}, "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": {"type": "object", "properties": {
                "parameter": {"type": "string"}, "storage": {"type": "string"},
                "path": {"type": "string"}, "mode": {"enum": ["copy", "mount"]},
                "writable": {"type": "boolean"}}}},
            "outputs": {"type": "array", "items": {"type": "object", "properties": {
                "path": {"type": "string"}}}},
            "scheduler_reachable": {"type": "boolean"},
            "notebook_available": {"type": "boolean"},
            "artifacts_removed_at": {"type": ["string", "null"], "format": "date-time"},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "ended_at": {"type": ["string", "null"], "format": "date-time"},
        },
    }


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}


def _paths() -> dict[str, Any]:
    errors = {"401": _PROBLEM, "404": _PROBLEM}
    return {
        "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [],
                                         "responses": {"200": {"description": "OpenAPI"}}}},
        "/api/v1/health": {"get": {
            "summary": "Reachability of each cluster, as the poller last saw it", "security": [],
            "responses": {"200": _json({"type": "object", "properties": {
                "status": {"type": "string"},
                "clusters": {"type": "object", "additionalProperties": {
                    "type": "object", "properties": {
                        "reachable": {"type": ["boolean", "null"],
                                      "description": "null: not checked yet (just started)"},
                        "error": {"type": "string"}}}}}}, "health")}}},
        "/api/v1/clusters": {"get": {"summary": "Clusters, partitions, allowlists",
                                     "responses": {"200": {"description": "clusters"}}}},
        "/api/v1/jobs": {
            "get": {"summary": "The caller's jobs, newest first", "responses": {
                "200": _json({"type": "object", "properties": {
                    "jobs": {"type": "array", "items": _JOB_REF}}}, "jobs"), "401": _PROBLEM}},
            "post": {
                "summary": "Submit a notebook run (multipart) or ask for a lab (JSON, kind lab)",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "maxLength": 200}}],
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["notebook", "spec"], "properties": {
                        "notebook": {"type": "string", "format": "binary"},
                        "spec": {"$ref": "#/components/schemas/JobSpec"}}}},
                    "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}}},
                "responses": {"201": _json(_JOB_REF, "the stored job"), "400": _PROBLEM,
                              "401": _PROBLEM, "411": _PROBLEM, "413": _PROBLEM,
                              "415": _PROBLEM, "422": _PROBLEM, "429": _PROBLEM},
            },
        },
        "/api/v1/jobs/{job_id}": {"get": {"parameters": [_ID], "summary": "One job",
                                          "responses": {"200": _json(_JOB_REF, "job"), **errors}}},
        "/api/v1/jobs/{job_id}/cancel": {"post": {
            "parameters": [_ID], "summary": "Cancel (idempotent)",
            "responses": {"202": _json(_JOB_REF, "cancel requested"),
                          "200": _json(_JOB_REF, "already terminal"), **errors}}},
        "/api/v1/jobs/{job_id}/notebook": {"get": {
            "parameters": [_ID],
            "summary": "The executed notebook (also a failed run's partial one)",
            "responses": {"200": {"description": "notebook", "content": {
                "application/x-ipynb+json": {}}}, "409": _PROBLEM, "410": _PROBLEM,
                **errors}}},
        "/api/v1/jobs/{job_id}/log": {"get": {
            "parameters": [_ID], "summary": "The job's output log",
            "responses": {"200": {"description": "log", "content": {"text/plain": {}}},
                          "410": _PROBLEM, **errors}}},
        "/api/v1/jobs/{job_id}/files": {"get": {
            "parameters": [_ID], "summary": "The job's collected output files (path, size)",
            "responses": {"200": {"description": "files"}, "410": _PROBLEM, **errors}}},
        "/api/v1/jobs/{job_id}/files/{path}": {"get": {
            "parameters": [_ID, {"name": "path", "in": "path", "required": True,
                                 "schema": {"type": "string"}}],
            "summary": "One collected output file",
            "responses": {"200": {"description": "file", "content": {
                "application/octet-stream": {}}}, "410": _PROBLEM, **errors}}},
        "/api/v1/storage": {
            "get": {"summary": "Your storage servers",
                    "responses": {"200": {"description": "storage servers"}, "401": _PROBLEM}},
            "post": {"summary": "Register a storage server (409: confirm its host key)",
                     "responses": {"201": {"description": "registered; public_key to authorize"},
                                   "401": _PROBLEM, "409": _PROBLEM, "413": _PROBLEM,
                                   "422": _PROBLEM, "503": _PROBLEM}}},
        "/api/v1/storage/{name}": {
            "get": {"parameters": [_NAME], "summary": "One storage server",
                    "responses": {"200": {"description": "storage server"}, **errors}},
            "delete": {"parameters": [_NAME], "summary": "Forget a storage server",
                       "responses": {"204": {"description": "forgotten"}, **errors}}},
        "/api/v1/jobs/{job_id}/events": {"get": {
            "parameters": [_ID], "summary": "The job's state history",
            "responses": {"200": {"description": "events"}, **errors}}},
    }


@cache
def openapi_document() -> dict[str, Any]:
    spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = spec_schema.pop("$defs", {})
    return {
        "openapi": "3.1.0",
        "info": {"title": "hpcgw", "version": __version__,
                 "description": "Notebook runs and JupyterLab sessions as Slurm batch jobs."},
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"JobSpec": spec_schema, "Job": _job_schema(), **definitions},
            "responses": {"Problem": {"description": "RFC 9457 problem", "content": {
                "application/problem+json": {"schema": {"type": "object", "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"},
                    "status": {"type": "integer"}, "detail": {"type": "string"},
                    "errors": {"type": "array"}}}}}}},
        },
    }
