"""The OpenAPI document: valid, complete (every route, every error, operationIds) and true of
what the API answers (answers validated against it). Schemathesis runs it against a real
gateway in tests/integration/test_openapi_fuzz.py."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from openapi_spec_validator import validate

from gateway.api.openapi import openapi_document
from tests.unit.test_api import Api, api  # noqa: F401  (the fixture)

METHODS = {"get", "post", "put", "patch", "delete"}


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, operation)
            for path, item in openapi_document()["paths"].items()
            for method, operation in item.items() if method in METHODS]


def conforms(answer: Any, schema: str) -> None:
    """Raise unless ``answer`` fits the document's schema ``schema``."""
    document = openapi_document()
    jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema}", "components": document["components"]},
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    ).validate(answer)


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    validate(document)
    assert document["openapi"] == "3.1.0"
    json.dumps(document)  # all of it is JSON


def test_every_api_route_is_documented_with_its_methods(api: Api) -> None:  # noqa: F811
    documented = {(path, method.upper()) for path, method, _ in operations()}
    served = set()
    for route in api.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        # a dynamic route's formatter is its path without the regexes: /api/v1/jobs/{job_id}
        path = info.get("path") or info.get("formatter", "")
        if path.startswith("/api/") and route.method not in ("HEAD", "*"):
            served.add((path, route.method))
    assert served == documented


def test_operations_have_ids_and_authenticated_ones_answer_401() -> None:
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids)) and all(ids)
    for path, method, operation in operations():
        public = operation.get("security") == []
        assert public == (path in ("/api/v1/openapi.json", "/api/v1/health")), (path, method)
        if not public:
            assert "401" in operation["responses"], (path, method)
            unauthorized = openapi_document()["components"]["responses"]["Unauthorized"]
            assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True


def test_every_job_field_is_in_the_schema_and_required() -> None:
    job = openapi_document()["components"]["schemas"]["Job"]
    expected = {"id", "kind", "name", "cluster", "state", "pending_reason", "expected_start",
                "reason", "message",
                "slurm_job_id", "node", "exit_code", "partition", "account", "qos",
                "constraint", "reservation", "cpus", "gpus", "gpu_type", "memory", "time",
                "image", "kernel", "parameters", "inputs", "outputs", "persist", "webhook",
                "progress", "scheduler_reachable", "notebook_available", "lab_url", "last_activity",
                "created_at",
                "updated_at", "started_at", "ended_at", "artifacts_removed_at"}
    assert set(job["properties"]) == expected
    assert set(job["required"]) == expected
    assert job["additionalProperties"] is False


def test_sinfo_numbers_are_numbers_in_the_document() -> None:
    partition = openapi_document()["components"]["schemas"]["SchedulerPartition"]
    for field in ("cpus_per_node", "memory_per_node_mb"):
        assert {"type": "integer"} in partition["properties"][field]["anyOf"]


def test_the_notebook_part_has_its_media_type() -> None:
    body = openapi_document()["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]
    encoding = body["multipart/form-data"]["encoding"]
    assert encoding["notebook"]["contentType"] == "application/x-ipynb+json"
    assert encoding["spec"]["contentType"] == "application/json"


async def test_the_api_answers_as_the_document_says(api: Api) -> None:  # noqa: F811
    """A notebook job, a lab, a page of jobs, events, clusters and a problem all fit."""
    notebook = await api.create({"name": "nb", "parameters": {"alpha": 0.5}})
    lab_answer = await api.client.post("/api/v1/jobs", json={"kind": "lab"},
                                       headers=api.auth(api.alice))
    assert lab_answer.status == 201, await lab_answer.text()
    lab = await lab_answer.json()
    for job in (notebook, lab, await api.wait_state(notebook["id"], "pending")):
        conforms(job, "Job")
    assert lab["lab_url"] == f"/labs/{lab['id']}/lab" and notebook["lab_url"] is None
    for path, schema in (("/api/v1/jobs?limit=1", "JobList"),
                         (f"/api/v1/jobs/{notebook['id']}/events", "EventList"),
                         ("/api/v1/clusters", "ClusterList"),
                         ("/api/v1/webhook-secret", "WebhookSecret")):
        response = await api.get(path)
        assert response.status == 200
        conforms(await response.json(), schema)
    clusters = await (await api.get("/api/v1/clusters")).json()
    scheduler = clusters["clusters"][0]["partitions"]["cpu"]["scheduler"]
    assert isinstance(scheduler["cpus_per_node"], int)
    problem = await api.submit({"gpus": "two"})
    assert problem.status == 422
    conforms(await problem.json(content_type=None), "Problem")


def test_the_webhook_url_is_described_with_its_limits() -> None:
    spec = openapi_document()["components"]["schemas"]
    url = spec["WebhookSpec"]["properties"]["url"]
    assert (url["maxLength"], url["format"]) == (2048, "uri")
    assert url["pattern"].startswith("^https?://")
    assert spec["WebhookSpec"]["additionalProperties"] is False
    assert spec["Event"]["properties"]["kind"]["enum"] == ["state", "webhook"]


async def test_a_spec_of_the_wrong_type_is_refused_not_coerced(api: Api) -> None:  # noqa: F811
    """The document says integer: "2" is refused (422), as schema-driven clients expect."""
    for spec in ({"cpus": "2"}, {"gpus": True}, {"inputs": [{"parameter": "x", "storage": "s",
                                                             "path": "/a", "writable": "yes"}]}):
        response = await api.submit(spec)
        assert response.status == 422, (spec, await response.text())


async def test_the_served_document_lists_the_clusters_allowlists(api: Api) -> None:  # noqa: F811
    """A generated client gets the partitions, images, kernels ... the gateway accepts."""
    response = await api.client.get("/api/v1/openapi.json")
    document = await response.json()
    validate(document)
    spec = document["components"]["schemas"]["JobSpec"]["properties"]
    assert spec["partition"]["anyOf"] == [{"enum": ["cpu", "gpu"]}, {"type": "null"}]
    assert spec["cluster"]["anyOf"][0] == {"enum": ["dev"]}
    assert spec["kernel"]["enum"] == ["python3"]
    refused = await api.submit({"partition": "debug"})
    assert refused.status == 422
