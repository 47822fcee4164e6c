"""The session gateway answers: the fixtures work end to end."""

from __future__ import annotations

import httpx


def test_get_book_through_the_gateway(http: httpx.Client) -> None:
    response = http.get("/v1/shelves/s1/books/b1")
    assert response.status_code == 200, response.text
    assert response.json()["received"]["name"] == "shelves/s1/books/b1"
    assert response.headers["x-request-id"]
