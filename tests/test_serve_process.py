"""A real `serve` process on a free 127.0.0.1 port: a bounded load test (every answer equal to offline
`predict`, no 5xx), 100 hostile requests after which a good one still answers, and SIGTERM during load
losing no accepted request."""

import base64
import itertools
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
import httpx  # noqa: E402
from serve_fixtures import TOKEN, assert_matches_offline, build_served_run, png_claiming  # noqa: E402

from pipeline.serve.process import ServeProcess  # noqa: E402

pytestmark = pytest.mark.slow
CLIENTS, REQUESTS_EACH, LOAD_DEADLINE_S = 16, 12, 120
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bert, tiny_clip):
    root = tmp_path_factory.mktemp("serve-process")
    served = build_served_run(root, tiny_bert, tiny_clip)
    (root / "token").write_text(TOKEN + "\n")
    served["flags"] = ["--token-file", root / "token", "--device", "cpu", "--max-body-mb", "1", "--max-posts", "8",
                       "--max-wait-ms", "10"]
    return served


@pytest.fixture(scope="module")
def server(served):
    """One process for the module (starting one costs seconds); the SIGTERM test, last, ends it."""
    with ServeProcess(served["run"], *served["flags"]) as server:
        server.answered_before = 0  # predict requests answered 200 by earlier tests: the SIGTERM test's baseline
        yield server


def requests_of(posts, count, size=3):
    """`count` requests of 1..size posts each, cycling through every post."""
    cycle = itertools.cycle(posts)
    return [[next(cycle) for _ in range(1 + i % size)] for i in range(count)]


def load(url, chosen_lists, deadline):
    """One client: its requests in order on one connection, stopping at the deadline."""
    answers = []
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        for chosen in chosen_lists:
            if time.monotonic() > deadline:
                break
            answers.append((chosen, client.post("/v1/predict", json={"posts": chosen})))
    return answers


def hostile_requests(posts):
    """(description, request kwargs, expected status): 100 of them, cycling through the kinds."""
    good = posts[0]
    kinds = [
        ("bomb", {"json": {"posts": [{"title": None, "image": _b64(png_claiming(100_000, 100_000))}]}}, 200),
        ("truncated", {"json": {"posts": [{"title": "a", "image": good["image"][:len(good["image"]) // 3]}]}}, 200),
        ("truncated JSON", {"content": b'{"posts": [{"title": "a"'}, 422),
        ("wrong type", {"json": {"posts": [{"title": ["a"]}]}}, 422),
        ("not an object", {"json": ["a", "b"]}, 422),
        ("oversize", {"json": {"posts": [{"title": "x" * (1 << 20)}]}}, 413),
        ("too many posts", {"json": {"posts": [{"title": "a"}] * 9}}, 413),
        ("missing token", {"json": {"posts": [good]}, "headers": {"Authorization": ""}}, 401),
        ("wrong token", {"json": {"posts": [good]}, "headers": {"Authorization": "Bearer guess"}}, 401),
        ("a path instead of bytes", {"json": {"posts": [{"title": "a", "image": "/etc/passwd"}]}}, 200),
    ]
    return [kinds[i % len(kinds)] for i in range(100)]


def _b64(data):
    return base64.b64encode(data).decode()


def test_load_then_hostile_requests_then_a_good_one(served, server):
    deadline = time.monotonic() + LOAD_DEADLINE_S
    work = requests_of(served["posts"], CLIENTS * REQUESTS_EACH)
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [a for part in pool.map(lambda i: load(server.url, work[i::CLIENTS], deadline),
                                          range(CLIENTS)) for a in part]
    assert len(answers) == CLIENTS * REQUESTS_EACH, "the load test ran past its deadline"
    server.answered_before += len(answers)
    for chosen, response in answers:
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        assert [p["id"] for p in got] == [p["id"] for p in chosen]
        assert_matches_offline(got, served["expected"])

    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        for what, request, status in hostile_requests(served["posts"]):
            response = client.post("/v1/predict", **request)
            assert response.status_code == status, (what, response.text)
            assert str(served["run"].parent) not in response.text
            server.answered_before += response.status_code == 200
            if what == "a path instead of bytes":  # never opened: base64 that is no image
                assert response.json()["predictions"][0]["status"] == "ok_text_only"
        after = client.post("/v1/predict", json={"posts": served["posts"][-8:]})
    assert after.status_code == 200
    server.answered_before += 1
    assert_matches_offline(after.json()["predictions"], served["expected"])


def test_sigterm_during_load_loses_no_accepted_request(served, server):
    results = []

    def client(i):
        posts = served["posts"]
        for n in itertools.count():
            chosen = [posts[(i + n) % len(posts)]]
            try:  # a fresh connection each time: after SIGTERM the server must refuse it, not half-answer it
                response = httpx.post(f"{server.url}/v1/predict", json={"posts": chosen}, headers=AUTH, timeout=60)
            except httpx.TransportError:  # refused, or reset from the backlog: the server never took it (the
                return  # counts below prove that: a request it took and did not answer would show there)
            results.append((chosen, response))
            if n > 400:
                return

    with ThreadPoolExecutor(8) as pool:
        running = [pool.submit(client, i) for i in range(8)]
        while len(results) < 40 and server.process.poll() is None:
            time.sleep(0.05)
        server.terminate()
        for future in running:
            future.result(timeout=120)
    assert server.wait() == 0
    counts = re.search(r"stopped: (\d+) of (\d+) predict requests answered", "".join(server.output))
    assert counts, "".join(server.output)
    answered, started = map(int, counts.groups())
    # every request the server took was answered, and the answer arrived
    assert answered == started == server.answered_before + len(results)
    for chosen, response in results:
        assert response.status_code == 200
        assert_matches_offline(response.json()["predictions"], served["expected"])
