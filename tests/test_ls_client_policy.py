"""Every call to Label Studio goes through one policy: Retry-After honoured, 5xx retried with backoff, one total
deadline, one-line give-ups naming Label Studio, the URL and the status; pagination with a hard bound; 401/403 a
configuration fault, never the image's. Against a stand-in Label Studio the test controls."""

from __future__ import annotations

import logging
import time

import pytest

from backend.ls_client import LabelStudioAuthError, LabelStudioClient, LabelStudioError, RetryPolicy
from backend.media import MediaError, MediaFetcher

from .ls_standin import StandInLabelStudio


@pytest.fixture
def standin():
    server = StandInLabelStudio()
    yield server
    server.stop()


def _client(standin, deadline: float = 4.0) -> LabelStudioClient:
    return LabelStudioClient(standin.url, standin.legacy_token, timeout=5, policy=RetryPolicy(deadline=deadline, first_delay=0.2, max_delay=1.0))


def test_429_waits_what_retry_after_says(standin):
    standin.script("GET", "/api/projects/1", (429, "slow down", {"Retry-After": "1"}), (429, "slow down", {"Retry-After": "1"}), (200, {"id": 1}))
    started = time.monotonic()
    assert _client(standin).get_json("/api/projects/1") == {"id": 1}
    hits = [t for t, *_ in standin.hits("GET", "/api/projects/1")]
    assert len(hits) == 3
    assert hits[1] - hits[0] >= 0.95 and hits[2] - hits[1] >= 0.95  # not retried at once
    assert time.monotonic() - started < 4


def test_a_run_of_503s_is_outlasted_and_a_longer_one_gives_up_in_one_line_within_the_deadline(standin):
    standin.script("GET", "/api/projects/2", (503, "busy"), (503, "busy"), (503, "busy"), (200, {"id": 2}))
    assert _client(standin).get_json("/api/projects/2") == {"id": 2}
    assert len(standin.hits("GET", "/api/projects/2")) == 4

    standin.script("GET", "/api/projects/3", (503, "<html>\n<h1>Service Unavailable</h1></html>"))
    client = _client(standin, deadline=3.0)
    started = time.monotonic()
    with pytest.raises(LabelStudioError) as caught:
        client.get_json("/api/projects/3")
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("Label Studio gave no usable answer: GET ") and f"{standin.url}/api/projects/3" in message
    assert "HTTP 503" in message and "SEGGPT_LS_DEADLINE 3 s" in message
    assert caught.value.status == 503 and caught.value.exhausted
    assert elapsed < 3.5, elapsed  # within the deadline (plus one request)
    assert len(standin.hits("GET", "/api/projects/3")) >= 3  # backoff, not one try
    # the next call within the pause fails at once: a chunk meets one deadline, not one per task
    started = time.monotonic()
    with pytest.raises(LabelStudioError):
        client.get_json("/api/projects/3")
    assert time.monotonic() - started < 0.5


def test_a_retry_after_beyond_the_deadline_gives_up_at_once(standin):
    standin.script("GET", "/api/tasks", (429, "", {"Retry-After": "3600"}))
    started = time.monotonic()
    with pytest.raises(LabelStudioError) as caught:
        list(_client(standin).iter_tasks(1))
    assert time.monotonic() - started < 1
    assert "HTTP 429 (Retry-After 3600)" in str(caught.value) and "Label Studio" in str(caught.value)
    assert len(standin.hits("GET", "/api/tasks")) == 1


def test_malformed_json_is_refused_in_one_line(standin):
    standin.script("GET", "/api/tasks", (200, b'{"tasks": [{"id": 1}, {"id"', {"Content-Type": "application/json"}))
    with pytest.raises(LabelStudioError) as caught:
        list(_client(standin).iter_tasks(7))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("Label Studio answered GET ") and "/api/tasks?project=7" in message
    assert "malformed JSON (HTTP 200" in message


def test_a_post_is_not_sent_twice_after_a_500(standin):
    standin.script("POST", "/api/projects/1/import/predictions", (500, "boom"))
    with pytest.raises(LabelStudioError) as caught:
        _client(standin).import_predictions(1, [{"task": 1, "result": []}])
    assert caught.value.status == 500 and "HTTP 500" in str(caught.value)
    assert len(standin.hits("POST", "/api/projects/1/import/predictions")) == 1


def test_pages_that_never_end_are_cut_and_logged(standin, caplog):
    page = {"tasks": [{"id": 1}, {"id": 2}], "total": 1000, "next": "http://x/api/tasks?page=2"}
    standin.script("GET", "/api/tasks", (200, page))  # the same page forever
    caplog.set_level(logging.WARNING, logger="backend.ls_client")
    started = time.monotonic()
    assert [t["id"] for t in _client(standin).iter_tasks(1, page_size=2)] == [1, 2]
    assert time.monotonic() - started < 2 and len(standin.hits("GET", "/api/tasks")) == 2
    assert "page 2 of the task list repeats tasks already read; the list ends here (2 task(s))" in caplog.text

    caplog.clear()
    counter = iter(range(10**6))
    standin.script("GET", "/api/tasks", lambda query: (200, {"tasks": [{"id": next(counter)}, {"id": next(counter)}], "total": 5,
                                                            "next": "http://x/api/tasks?page=n"}))  # fresh ids, a next, forever
    ids = [t["id"] for t in _client(standin).iter_tasks(1, page_size=2)]
    assert len(ids) == 2 * (5 // 2 + 1)  # page count bound: total / page_size + 1 pages
    assert "goes past page 3 although it counts 5 task(s)" in caplog.text


def test_401_and_403_are_the_token_not_the_image(standin):
    standin.script("GET", "/data/upload/1/a.png", (401, {"detail": "Invalid token."}))
    standin.script("GET", "/data/upload/1/b.png", (403, {"detail": "forbidden"}))
    standin.script("GET", "/data/upload/1/gone.png", (404, "no such file"))
    fetcher = MediaFetcher(_client(standin))
    for name, status in (("a", 401), ("b", 403)):
        with pytest.raises(LabelStudioAuthError) as caught:
            fetcher.fetch(f"/data/upload/1/{name}.png", 5)
        assert str(caught.value).startswith(f"Label Studio rejects the token: GET {standin.url}/data/upload/1/{name}.png answered HTTP {status}")
        assert not isinstance(caught.value, MediaError)  # a system fault: never a final empty result
        assert standin.legacy_token not in str(caught.value)
    with pytest.raises(MediaError, match="HTTP 404"):  # the image itself: final
        fetcher.fetch("/data/upload/1/gone.png", 5)
    # media on the Label Studio host is fetched under the same policy (and with the token)
    standin.script("GET", "/data/upload/1/c.png", (503, "busy"), (200, b"\x89PNG....", {"Content-Type": "image/png"}))
    assert fetcher.fetch("/data/upload/1/c.png", 5) == b"\x89PNG...."
    hits = standin.hits("GET", "/data/upload/1/c.png")
    assert len(hits) == 2 and hits[-1][3] == f"Token {standin.legacy_token}"


def test_the_personal_access_token_refresh_is_under_the_same_policy(standin):
    import base64
    import json

    def jwt(payload: dict) -> str:
        part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")  # noqa: E731
        return f"{part({'alg': 'none'})}.{part(payload)}.sig"

    pat = jwt({"token_type": "refresh", "exp": time.time() + 3600})
    access = jwt({"token_type": "access", "exp": time.time() + 300})
    standin.script("POST", "/api/token/refresh/", (503, "busy"), (200, {"access": access}))
    standin.script("GET", "/api/projects/1", (200, {"id": 1}))
    client = LabelStudioClient(standin.url, pat, policy=RetryPolicy(deadline=4, first_delay=0.2))
    assert client.get_json("/api/projects/1") == {"id": 1}
    assert standin.hits("GET", "/api/projects/1")[-1][3] == f"Bearer {access}"
    assert len(standin.hits("POST", "/api/token/refresh/")) == 2

    standin.script("POST", "/api/token/refresh/", (401, {"detail": "Token is invalid or expired"}))
    with pytest.raises(LabelStudioAuthError, match=r"^Label Studio rejects the token: POST .*/api/token/refresh/ answered HTTP 401"):
        LabelStudioClient(standin.url, pat, policy=RetryPolicy(deadline=4)).get_json("/api/projects/1")
