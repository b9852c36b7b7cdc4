"""`serve` in process (FastAPI's TestClient): every endpoint, limit and error, each answer equal to
offline `predict` for the same post."""

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402
from serve_fixtures import TOKEN, assert_matches_offline, build_served_run  # noqa: E402

from pipeline import Classifier  # noqa: E402
from pipeline.__main__ import main  # noqa: E402
from pipeline.serve.app import create_app  # noqa: E402
from pipeline.serve.config import ServeConfig  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bert, tiny_clip):
    served = build_served_run(tmp_path_factory.mktemp("serve"), tiny_bert, tiny_clip)
    served["classifier"] = Classifier.from_run(served["run"], device="cpu", batch_size=8)
    served["config"] = ServeConfig(run=str(served["run"]), device="cpu", max_batch=8)
    return served


def client_for(served, token=None, **settings):
    return TestClient(create_app(served["classifier"], replace(served["config"], **settings), token))


def test_predict_answers_as_offline_predict_for_good_half_and_hostile_posts(served):
    with client_for(served) as client:
        response = client.post("/v1/predict", json={"posts": served["posts"]})
    assert response.status_code == 200
    body = response.json()
    assert [p["id"] for p in body["predictions"]] == [p["id"] for p in served["posts"]]
    assert_matches_offline(body["predictions"], served["expected"])
    statuses = {p["id"]: p["status"] for p in body["predictions"]}
    assert statuses["only+bomb_huge.png"] == statuses["only+bomb_cap.png"] == "empty_title_and_too_many_pixels"
    assert statuses["title+truncated.jpg"] == "ok_text_only" and statuses["no-title"] == "ok_image_only"
    assert body["model"]["classes"] == ["fake", "real"]


def test_ids_default_to_positions_and_bad_base64_fails_only_its_post(served):
    good = served["posts"][0]
    with client_for(served) as client:
        body = client.post("/v1/predict", json={"posts": [
            {"title": good["title"], "image": good["image"]}, {"title": None, "image": "%%% not base64"},
            {"title": "a dog", "image": "%%%"}]}).json()
        empty = client.post("/v1/predict", json={"posts": []})
    assert empty.status_code == 200 and empty.json()["predictions"] == []
    assert [p["id"] for p in body["predictions"]] == ["0", "1", "2"]
    assert [p["status"] for p in body["predictions"]] == ["ok", "empty_title_and_bad_base64", "ok_text_only"]
    want = served["expected"].loc[good["id"], "prob_real"]
    assert abs(body["predictions"][0]["probs"]["real"] - want) <= 1e-5


def test_concurrent_requests_are_batched_and_each_gets_its_own_answers(served):
    posts = served["posts"]
    with client_for(served, max_wait_ms=50.0, max_batch=16) as client:
        def ask(i):
            chosen = [posts[i % len(posts)], posts[(i * 7 + 3) % len(posts)]]
            return chosen, client.post("/v1/predict", json={"posts": chosen})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(32)))
        batches = client.app.app_state.batcher.batches
    for chosen, response in answers:
        assert response.status_code == 200
        got = response.json()["predictions"]
        assert [p["id"] for p in got] == [p["id"] for p in chosen]
        assert_matches_offline(got, served["expected"])
    assert batches < len(answers)  # requests were scored together, not one by one


def test_the_form_endpoint_takes_a_title_and_an_image_file(served):
    post = next(p for p in served["posts"] if p["id"] == "te0002")
    with client_for(served) as client:
        with_image = client.post("/v1/predict/form", data={"title": post["title"], "id": "te0002"},
                                 files={"image": ("x.jpg", base64.b64decode(post["image"]), "image/jpeg")})
        title_only = client.post("/v1/predict/form", data={"title": "a photo of a cat", "id": "no-image"})
        nothing_chosen = client.post("/v1/predict/form", data={"title": "a photo of a cat", "id": "no-image"},
                                     files={"image": ("", b"", "application/octet-stream")})
    for response in (with_image, title_only, nothing_chosen):
        assert response.status_code == 200
        assert_matches_offline(response.json()["predictions"], served["expected"])
    assert title_only.json()["predictions"][0]["status"] == "ok_text_only"


def test_probes_model_record_and_docs(served):
    with client_for(served) as client:
        assert client.get("/healthz").json() == {"status": "alive"}
        assert client.get("/readyz").json() == {"status": "ready"}
        model = client.get("/v1/model").json()
        schema = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    record = json.loads((served["run"] / "encoders.json").read_text())
    assert model["classes"] == record["class_names"] and model["threshold"] == record["threshold"]
    assert model["run"] == "run" and model["calibration"] is None and model["half_posts"] is True
    assert model["encoders"]["text_model_sha256"] == record["text_model"]["sha256"]
    assert str(served["run"].parent) not in json.dumps(model)  # hashes and settings, never a server path
    assert {"/v1/predict", "/v1/predict/form", "/healthz", "/readyz", "/v1/model"} <= set(schema["paths"])


def test_the_page_has_no_external_resource_and_shows_text_only(served):
    with client_for(served) as client:
        response = client.get("/")
    page, policy = response.text, response.headers["content-security-policy"]
    assert response.status_code == 200 and 'id="title"' in page and 'type="file"' in page
    assert "http://" not in page and "https://" not in page and "@import" not in page and "url(" not in page
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe-inline" not in policy


def test_oversize_bodies_are_413_whether_announced_or_streamed(served):
    big = json.dumps({"posts": [{"title": "x" * (2 << 20)}]}).encode()
    with client_for(served, max_body_mb=1.0) as client:
        announced = client.post("/v1/predict", content=big, headers={"content-type": "application/json"})
        streamed = client.post("/v1/predict", content=(big[i:i + 65536] for i in range(0, len(big), 65536)),
                               headers={"content-type": "application/json"})
        small = client.post("/v1/predict", json={"posts": [{"title": "a cat"}]})
    assert announced.status_code == streamed.status_code == 413
    assert "--max-body-mb" in announced.json()["error"] and small.status_code == 200


def test_too_many_posts_is_413(served):
    with client_for(served, max_posts=3) as client:
        response = client.post("/v1/predict", json={"posts": [{"title": "a"}] * 4})
    assert response.status_code == 413 and "--max-posts" in response.json()["error"]


@pytest.mark.parametrize("body, field", [
    (b'{"posts": [{"title": "a"', "body"),  # truncated JSON
    (b'{"posts": [{"title": 5}]}', "posts.0.title"),
    (b'{"posts": [{"image": ["a"]}]}', "posts.0.image"),
    (b'{"posts": "a cat"}', "posts"),
    (b'{"post": []}', "posts"),
    (b'{"posts": [{"title": "a", "image_path": "/etc/passwd"}]}', "posts.0.image_path"),  # no paths, ever
])
def test_malformed_json_or_a_wrong_type_is_422_naming_the_field(served, body, field):
    with client_for(served) as client:
        response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error.startswith(field) or f"; {field}" in error, error
    assert "/etc/passwd" not in error and str(served["run"].parent) not in error


def test_more_requests_than_max_concurrency_get_503_with_retry_after(served, monkeypatch):
    release, entered = threading.Event(), threading.Event()
    original = served["classifier"].predict

    def held(*args, **kwargs):
        entered.set()
        release.wait(10)
        return original(*args, **kwargs)

    monkeypatch.setattr(served["classifier"], "predict", held)
    with client_for(served, max_concurrency=1) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/predict", json={"posts": [{"title": "a cat"}]})
        assert entered.wait(10)
        busy = client.post("/v1/predict", json={"posts": [{"title": "a dog"}]})
        release.set()
        assert first.result().status_code == 200
        assert client.get("/healthz").status_code == 200  # probes are never refused
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]


def test_a_request_over_the_timeout_gets_503(served, monkeypatch):
    original = served["classifier"].predict
    monkeypatch.setattr(served["classifier"], "predict", lambda *a, **k: (time.sleep(1.0), original(*a, **k))[1])
    with client_for(served, request_timeout_s=0.2) as client:
        response = client.post("/v1/predict", json={"posts": [{"title": "a cat"}]})
    assert response.status_code == 503 and "retry-after" in response.headers
    assert "--request-timeout-s" in response.json()["error"]


def test_a_request_that_breaks_the_model_fails_alone(served, monkeypatch):
    original = served["classifier"].predict

    def fragile(titles, images, ids=None, **kwargs):
        if "breaks the model" in titles:
            raise RuntimeError(f"boom in {served['run']}")  # a server path that must not reach the client
        return original(titles, images, ids=ids, **kwargs)

    monkeypatch.setattr(served["classifier"], "predict", fragile)
    with client_for(served, max_wait_ms=100.0) as client, ThreadPoolExecutor(2) as pool:
        bad = pool.submit(client.post, "/v1/predict", json={"posts": [{"title": "breaks the model"}]})
        good = pool.submit(client.post, "/v1/predict", json={"posts": [{"title": "a photo of a cat",
                                                                        "id": "no-image"}]})
        bad, good = bad.result(), good.result()
    assert bad.status_code == 500 and str(served["run"]) not in bad.text
    assert good.status_code == 200
    assert_matches_offline(good.json()["predictions"], served["expected"])


def test_a_token_is_required_when_configured(served):
    with client_for(served, token=TOKEN) as client:
        missing = client.post("/v1/predict", json={"posts": [{"title": "a"}]})
        wrong = client.post("/v1/predict", json={"posts": [{"title": "a"}]}, headers={"Authorization": "Bearer no"})
        right = client.post("/v1/predict", json={"posts": [{"title": "a"}]},
                            headers={"Authorization": f"Bearer {TOKEN}"})
        model = client.get("/v1/model")
        form = client.post("/v1/predict/form", data={"title": "a"})
        public = [client.get(path).status_code for path in ("/healthz", "/readyz", "/", "/openapi.json")]
    assert missing.status_code == wrong.status_code == model.status_code == form.status_code == 401
    assert right.status_code == 200 and public == [200] * 4  # probes, and pages a browser loads bare
    assert missing.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("flags, message", [
    (["--host", "0.0.0.0"], "--token-file"),
    (["--host", "192.168.1.10", "--port", "70000"], "--port 70000"),
    (["--max-batch", "0"], "--max-batch 0"),
])
def test_bad_serve_flags_exit_2_before_any_model_loads(served, flags, message, capsys):
    assert main(["serve", "--run", str(served["run"]), *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_non_loopback_address_is_allowed_with_an_explicit_no_auth_or_a_token(served, tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    ServeConfig(run=str(served["run"]), host="0.0.0.0", no_auth=True)
    ServeConfig(run=str(served["run"]), host="0.0.0.0", token_file=str(tmp_path / "token"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(Exception, match="empty"):
        ServeConfig(run=str(served["run"]), host="0.0.0.0", token_file=str(tmp_path / "empty"))


def test_serve_loads_the_model_on_the_thread_that_scores_it(served, monkeypatch):
    """One thread runs torch in a serving process, so OpenMP keeps one team of threads (serve/batcher.py)."""
    import uvicorn

    real_load, loaded_on, scored_on = Classifier.from_run, [], []

    def load(*args, **kwargs):
        loaded_on.append(threading.get_ident())
        return real_load(*args, **kwargs)

    def serve_nothing(server, sockets):  # instead of serving: where the batcher would run the model
        executor = server.config.app.app_state.batcher.executor
        scored_on.append(executor.submit(threading.get_ident).result())
        executor.shutdown()
        sockets[0].close()

    monkeypatch.setattr(Classifier, "from_run", load)
    monkeypatch.setattr(uvicorn.Server, "run", serve_nothing)
    assert main(["serve", "--run", str(served["run"]), "--device", "cpu", "--port", "0"]) == 0
    assert loaded_on == scored_on and loaded_on[0] != threading.get_ident()
