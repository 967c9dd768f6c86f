"""The OpenAPI 3.1 document of the HTTP API.

Every schema comes from a pydantic model: the request models the handlers parse with
(:class:`gateway.spec.JobSpec`, :class:`.storage.StorageRequest`) and the answer models they
answer with (:mod:`.models`). This module only says which operation takes and answers which;
``tests/unit/test_openapi.py`` checks that each route is documented and the document is valid,
and CI runs schemathesis against a real gateway with it.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic.json_schema import models_json_schema

from .. import __version__
from ..config import Config, schema_pattern
from ..listing import KINDS, MAX_LIMIT, SINCE_PATTERN, SLURM_ID
from ..spec import JobSpec
from ..states import State
from . import models
from .storage import StorageRequest

_SCHEMAS = "#/components/schemas/"
_ANSWERS = [models.Job, models.JobList, models.AdminJobList, models.EventList,
            models.OutputFileList, models.Health, models.ClusterList, models.Storage,
            models.StorageList, models.WebhookSecret, models.Problem]
_PROBLEM = {"$ref": "#/components/responses/Problem"}
_UNAUTHORIZED = {"$ref": "#/components/responses/Unauthorized"}
_ID = {"name": "job_id", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": models.JOB_ID_PATTERN}}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}


def _ref(model: str) -> dict[str, str]:
    return {"$ref": _SCHEMAS + model}


def _json(model: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref(model)}}, **extra}


def _listed(values: list[str]) -> str:
    """A pattern for a comma-separated list of ``values``."""
    one = "(" + "|".join(values) + ")"
    return f"^{one}(,{one})*$"


def _operation(operation_id: str, summary: str, responses: dict[str, Any],
               parameters: list[dict[str, Any]] | None = None,
               public: bool = False, **extra: Any) -> dict[str, Any]:
    """An operation; an authenticated one also answers 401 (the security is the document's)."""
    answer = {"operationId": operation_id, "summary": summary,
              "responses": responses if public else {**responses, "401": _UNAUTHORIZED},
              **extra}
    if parameters:
        answer["parameters"] = parameters
    if public:
        answer["security"] = []
    return answer


def _job_links() -> dict[str, Any]:
    """Where a client goes from a job it was given (schemathesis follows these)."""
    job_id = {"job_id": "$response.body#/id"}
    return {name: {"operationId": op, "parameters": job_id} for name, op in (
        ("GetJob", "getJob"), ("CancelJob", "cancelJob"), ("GetJobEvents", "getJobEvents"),
        ("GetJobLog", "getJobLog"), ("GetJobNotebook", "getJobNotebook"),
        ("ListJobFiles", "listJobFiles"))}


def _job_paths() -> dict[str, Any]:
    not_found = {"404": _PROBLEM}
    gone = {"410": _PROBLEM}
    created = _json("Job", "the stored job (or, for a repeated Idempotency-Key, the first one)",
                    headers={"Location": {"required": True, "schema": {"type": "string"}},
                             "Idempotent-Replayed": {"schema": {"const": "true"}}},
                    links=_job_links())
    return {
        "/api/v1/jobs": {
            "get": _operation("listJobs", "The caller's jobs, newest first, filtered and paged",
                              {"200": _json("JobList", "a page of jobs", headers={"Link": {
                                  "schema": {"type": "string"},
                                  "description": 'the next page: <URL>; rel="next"'}}),
                               "422": _PROBLEM}, _list_filters()),
            "post": _operation(
                "submitJob",
                "Submit a notebook run (multipart: notebook, spec, side files) or ask for a lab "
                "(JSON spec of kind lab)",
                {"201": created, "400": _PROBLEM, "409": _PROBLEM, "411": _PROBLEM,
                 "413": _PROBLEM, "415": _PROBLEM, "422": _PROBLEM, "429": _PROBLEM,
                 "503": _PROBLEM},
                [{"name": "Idempotency-Key", "in": "header", "required": False,
                  "description": "the same key and request: the first job again (201, "
                  "Idempotent-Replayed); the same key with another request: 422",
                  "schema": {"type": "string", "minLength": 1, "maxLength": 200}}],
                requestBody=_submit_body()),
        },
        "/api/v1/jobs/stream": {"get": _operation(
            "streamJobs", "Server-sent events: one `job` event per state change of your jobs "
            "(data: the job; id: the change's event id, for Last-Event-ID), `: keep-alive` "
            "comments between; never ends by itself",
            {"200": {"description": "the event stream", "content": {
                "text/event-stream": {"schema": {"type": "string"}}}},
             "403": _PROBLEM, "422": _PROBLEM, "429": _PROBLEM},
            _stream_parameters())},
        "/api/v1/admin/jobs": {"get": _operation(
            "listAllJobs", "Admins: every user's jobs, newest first, filtered and paged",
            {"200": _json("AdminJobList", "a page of jobs, each with its owner"),
             "403": _PROBLEM, "422": _PROBLEM},
            [*_list_filters(), {"name": "user", "in": "query", "required": False,
                                "description": "only this user's jobs",
                                "schema": {"type": "string"}}])},
        "/api/v1/jobs/{job_id}": {"get": _operation(
            "getJob", "One job", {"200": _json("Job", "the job"), **not_found}, [_ID])},
        "/api/v1/jobs/{job_id}/cancel": {"post": _operation(
            "cancelJob", "Cancel a job (idempotent)",
            {"202": _json("Job", "cancel requested"),
             "200": _json("Job", "already ended: nothing to cancel"), **not_found}, [_ID])},
        "/api/v1/jobs/{job_id}/notebook": {"get": _operation(
            "getJobNotebook", "The executed notebook (also a failed run's partial one)",
            {"200": {"description": "the notebook", "content": {
                "application/x-ipynb+json": {"schema": {"type": "object"}}}},
             "409": _PROBLEM, **gone, **not_found}, [_ID])},
        "/api/v1/jobs/{job_id}/log": {"get": _operation(
            "getJobLog", "The job's output log: its tail, or from byte `offset` on",
            {"200": _log_answer(), **gone, **not_found, "422": _PROBLEM},
            [_ID, {"name": "offset", "in": "query", "required": False,
                   "description": "the first byte to send (a follower's Hpcgw-Log-Next)",
                   "schema": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}}])},
        "/api/v1/jobs/{job_id}/events": {"get": _operation(
            "getJobEvents", "The job's state changes and webhook delivery attempts, oldest first",
            {"200": _json("EventList", "the events"), **not_found}, [_ID])},
        "/api/v1/jobs/{job_id}/files": {"get": _operation(
            "listJobFiles", "The job's collected output files",
            {"200": _json("OutputFileList", "the files"), **gone, **not_found}, [_ID])},
        "/api/v1/jobs/{job_id}/files/{path}": {"get": _operation(
            "getJobFile", "One collected output file",
            {"200": {"description": "the file", "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}},
             **gone, **not_found},
            [_ID, {"name": "path", "in": "path", "required": True,
                   "schema": {"type": "string"}}])},
    }


def _stream_parameters() -> list[dict[str, Any]]:
    event_id = {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}
    return [
        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": event_id,
         "description": "resume after this event (EventSource sends it when it reconnects)"},
        {"name": "after", "in": "query", "required": False, "schema": event_id,
         "description": "start after this event (without Last-Event-ID); absent: with the "
         "next change"},
        {"name": "all", "in": "query", "required": False, "schema": {"const": "1"},
         "description": "admins: every user's jobs, each with its owner as `user`"},
    ]


def _list_filters() -> list[dict[str, Any]]:
    def query(name: str, description: str, **schema: Any) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": description,
                "schema": {"type": "string", **schema}}

    return [
        {"name": "limit", "in": "query", "required": False, "description": "jobs per page",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}},
        query("cursor", "where the page starts: take it from the previous page's `next`"),
        query("state", "states, comma-separated (any of them)",
              pattern=_listed([s.value for s in State])),
        query("kind", "kinds, comma-separated", pattern=_listed(list(KINDS))),
        query("name", "the job's exact name"),
        query("slurm_job_id", "the job Slurm knows by this id",
              pattern=schema_pattern(SLURM_ID)),
        query("since", "created at or after this time (with its zone)", format="date-time",
              pattern=SINCE_PATTERN),
    ]


def _submit_body() -> dict[str, Any]:
    notebook_run = {
        "type": "object", "required": ["notebook", "spec"],
        "properties": {
            "notebook": {"type": "string", "format": "binary",
                         "description": "the notebook (nbformat 4; older ones are upgraded); "
                         "its file name names a job whose spec has no name"},
            "spec": _ref("JobSpec"),
            "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                     "description": "side files, put next to the notebook by their file names"},
        }}
    return {"required": True, "content": {
        "multipart/form-data": {"schema": notebook_run, "encoding": {
            "notebook": {"contentType": "application/x-ipynb+json"},
            "spec": {"contentType": "application/json"},
            "file": {"contentType": "application/octet-stream"}}},
        "application/json": {"schema": _ref("JobSpec")}},
        "description": "multipart/form-data for a notebook run; application/json (a spec of "
        "kind lab) for a lab"}


def _log_answer() -> dict[str, Any]:
    number = {"schema": {"type": "integer", "minimum": 0}}
    return {"description": "the log's bytes as UTF-8 text", "headers": {
        "Hpcgw-Job-State": {"required": True, "schema": {"enum": [s.value for s in State]},
                            "description": "the job's state when the log was read"},
        "Hpcgw-Log-Start": {**number, "description": "with offset: where these bytes start"},
        "Hpcgw-Log-Next": {**number, "description": "with offset: where to ask next"}},
        "content": {"text/plain": {"schema": {"type": "string"}}}}


def _other_paths() -> dict[str, Any]:
    storage_links = {name: {"operationId": op, "parameters": {"name": "$response.body#/name"}}
                     for name, op in (("GetStorage", "getStorage"),
                                      ("DeleteStorage", "deleteStorage"))}
    return {
        "/api/v1/openapi.json": {"get": _operation(
            "getOpenAPI", "This document", {"200": {"description": "OpenAPI 3.1", "content": {
                "application/json": {"schema": {"type": "object"}}}}}, public=True)},
        "/api/v1/health": {"get": _operation(
            "getHealth", "Reachability of each cluster, as the poller last saw it",
            {"200": _json("Health", "health")}, public=True)},
        "/api/v1/clusters": {"get": _operation(
            "listClusters", "Clusters: partitions with limits and defaults, allowlists, images",
            {"200": _json("ClusterList", "the clusters")})},
        "/api/v1/webhook-secret": {"get": _operation(
            "getWebhookSecret", "Your webhook secret: the key of the Hpcgw-Signature header "
            "on your jobs' webhook deliveries",
            {"200": _json("WebhookSecret", "the secret (the same on every call)")})},
        "/api/v1/storage": {
            "get": _operation("listStorage", "Your storage servers",
                              {"200": _json("StorageList", "the storage servers")}),
            "post": _operation(
                "addStorage", "Register a storage server (409: confirm its host key first)",
                {"201": _json("Storage", "registered: put public_key into the account's "
                              "authorized_keys", links=storage_links,
                              headers={"Location": {"required": True,
                                                    "schema": {"type": "string"}}}),
                 "400": _PROBLEM, "409": _PROBLEM, "413": _PROBLEM, "415": _PROBLEM,
                 "422": _PROBLEM, "429": _PROBLEM},
                requestBody={"required": True, "content": {
                    "application/json": {"schema": _ref("StorageRequest")}}})},
        "/api/v1/storage/{name}": {
            "get": _operation("getStorage", "One storage server",
                              {"200": _json("Storage", "the storage server"),
                               "404": _PROBLEM}, [_NAME]),
            "delete": _operation("deleteStorage", "Forget a storage server",
                                 {"204": {"description": "forgotten"}, "404": _PROBLEM},
                                 [_NAME])},
    }


def _schemas() -> dict[str, Any]:
    inputs = [(JobSpec, "validation"), (StorageRequest, "validation")]
    answers = [(model, "serialization") for model in _ANSWERS]
    _, document = models_json_schema([*inputs, *answers],  # type: ignore[list-item]
                                     ref_template=_SCHEMAS + "{model}")
    return dict(sorted(document["$defs"].items()))


def _problem(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {
        "application/problem+json": {"schema": _ref("Problem")}}, **extra}


def _with_policy(schemas: dict[str, Any], config: Config) -> dict[str, Any]:
    """``schemas`` with the job spec's allowlists as enums: the values the gateway's clusters
    accept (any cluster's: that a partition belongs to the cluster asked for is a rule across
    fields, checked by the gateway and described here in words)."""
    clusters = [c for c in config.clusters if c.name not in config.cluster_errors]
    allowed = {
        "cluster": [c.name for c in clusters],
        "partition": [p for c in clusters for p in c.partitions],
        "account": [a for c in clusters for a in c.accounts],
        "qos": [q for c in clusters for q in c.qos],
        "constraint": [k for c in clusters for k in c.constraints],
        "reservation": [r for c in clusters for r in c.reservations],
        "gpu_type": [t for c in clusters for p in c.partitions.values() for t in p.gpu_types],
        "image": [i for c in clusters for i in c.images],
    }
    spec = copy.deepcopy(schemas["JobSpec"])
    for field, values in allowed.items():
        described = spec["properties"][field]
        described.pop("anyOf", None)
        described.pop("maxLength", None)
        described["anyOf"] = [{"enum": sorted(set(values))}, {"type": "null"}] if values else [
            {"type": "null"}]
    kernels = sorted({k for c in clusters for k in c.kernels})
    spec["properties"]["kernel"] = {**spec["properties"]["kernel"], "enum": kernels}
    spec["description"] = (spec.get("description", "") + "\n\nThe enums are what any of the "
                           "gateway's clusters allows; a value must also be allowed by the "
                           "cluster the job runs on (its partitions, their limits and GPU "
                           "types: GET /api/v1/clusters).")
    return {**schemas, "JobSpec": spec}


def openapi_document(config: Config | None = None) -> dict[str, Any]:
    """The whole document; with ``config``, the job spec's allowlists are enums of its
    clusters' values (the document a gateway serves)."""
    schemas = _schemas()
    if config is not None:
        schemas = _with_policy(schemas, config)
    return {
        "openapi": "3.1.0",
        "info": {"title": "hpcgw", "version": __version__,
                 "description": "Notebook runs and JupyterLab sessions as Slurm batch jobs. "
                 "Every error is an RFC 9457 problem (application/problem+json) whose `type` "
                 "is a page of the gateway explaining it. A method a path does not have is a "
                 "405 problem with an `Allow` header."},
        "security": [{"bearer": []}],
        "paths": {**_other_paths(), **_job_paths()},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
            "responses": {
                "Problem": _problem("an RFC 9457 problem"),
                "Unauthorized": _problem(
                    "no valid token (or browser session)", headers={"WWW-Authenticate": {
                        "required": True, "schema": {"type": "string"}}}),
            },
        },
    }
