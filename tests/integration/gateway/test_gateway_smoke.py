"""The session gateway answers: the fixtures work end to end."""

from __future__ import annotations

import httpx


def test_get_book_through_the_gateway(http: httpx.Client) -> None:
    response = http.get("/v1/shelves/s1/books/b1")
    assert response.status_code == 200, response.text
    assert response.json()["received"]["name"] == "shelves/s1/books/b1"
    assert response.headers["x-request-id"]


def test_a_services_field_violations_reach_the_rest_caller(http: httpx.Client) -> None:
    """InvalidArgument.field on the server -> grpc-status-details-bin -> details in JSON."""
    response = http.post("/v1/shape", json={"failCode": 99})
    assert response.status_code == 400, response.text
    assert response.json() == {
        "code": 3,
        "message": "fail_code: 99 is not a gRPC error code (1..16)",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [
                    {
                        "field": "fail_code",
                        "description": "99 is not a gRPC error code (1..16)",
                        "reason": "",
                        "localizedMessage": None,
                    }
                ],
            }
        ],
    }
