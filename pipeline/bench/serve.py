"""`serve` figures: posts per second under a concurrent load test against offline `predict` on the same
posts with the same (loaded) models, and single-post latency on a quiet server.

  serve.rows_per_s    posts/s answered by a `serve` process under `clients` concurrent clients
  serve.vs_predict    serve.rows_per_s / offline predict's rows/s on the same posts (models loaded in both;
                      medians of 3 alternating rounds, each round's ratio in vs_predict_rounds)
  serve.p50_ms/p99_ms one post per request, one request at a time
  serve.matches_predict share of the load test's answers (every round's) with predict's status and
                      probability (1e-5)

The load generator is 16 client threads in this (the bench) process, each with one keep-alive connection
(`Poster`); the server is its own process. On a 2-core machine the clients' CPU (0.2-0.3 core-ms a post,
against the server's 8-12) is taken from the server, so the figure is a little below what the server
alone would do; every answer is still checked.

`python -m pipeline.bench.serve [--repeats 3]` runs this figure alone, as `make bench` does for the demo
configuration (demo rows embedded, predict's run, then the serve figure `--repeats` times).
"""

import argparse
import base64
import http.client
import json
import shutil
import statistics
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

SKIP_REASON = "the serve extra is not installed (pip install -e '.[serve]'), so serve was not measured"


def bench_serve(work, name, device="cpu", clients=16, passes=2, latency_requests=60, rounds=3):
    """On the run and rows `bench_predict` made for configuration `name`; {"skipped": why} without the extra.
    `rounds` alternating passes of offline predict and of the load test; the rates are their medians."""
    try:
        import fastapi  # noqa: F401 - only to know whether the server can start
    except ModuleNotFoundError:
        return {"skipped": SKIP_REASON}
    from pipeline.data.splits import find_split_file, read_split
    from pipeline.embed import cache
    from pipeline.predict.classifier import Classifier
    from pipeline.serve.process import ServeProcess

    embed = cache.read_manifest(work / f"cache-{name}")["config"]["embed"]
    run, root = work / f"predict-run-{name}", Path(embed["image_root"] or embed["data_dir"])
    rows = read_split(embed["data_dir"], "train")
    bodies = [json.dumps({"posts": [{"id": key, "title": title or None,
                                     "image": base64.b64encode((root / path).read_bytes()).decode()}]}).encode()
              for key, title, path in zip(rows.ids, rows.texts, rows.image_paths)]

    classifier = Classifier.from_run(run, device=device, batch_size=embed["batch_size"])

    def offline_pass():
        started = time.perf_counter()
        frame = classifier.predict_tsv(find_split_file(embed["data_dir"], "train"), image_root=root,
                                       num_workers=embed["num_workers"], part_rows=embed["part_rows"])
        return len(rows) / (time.perf_counter() - started), frame

    with ServeProcess(run, "--device", device, "--max-concurrency", str(4 * clients)) as server, \
            closing(Poster(server.url)) as poster:
        poster.post(bodies[0])  # warm-up: first-call costs are in neither figure
        latencies = []
        for body in (bodies * latency_requests)[:latency_requests]:
            begun = time.perf_counter()
            poster.post(body)
            latencies.append(1000 * (time.perf_counter() - begun))
        work_items = bodies * passes

        def one_client(index):
            with closing(Poster(server.url)) as own:
                return [answer for body in work_items[index::clients] for answer in own.post(body)]

        offline_rates, served_rates, answers = [], [], []
        for _ in range(rounds):  # in turn (the server idles meanwhile), so a neighbour's burst falls on both
            rate, offline = offline_pass()
            offline_rates.append(rate)
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                answers += [answer for part in pool.map(one_client, range(clients)) for answer in part]
            served_rates.append(len(work_items) / (time.perf_counter() - started))
    offline = {key: (status, p) for key, status, p in zip(offline["id"], offline["status"], offline["prob_real"])}
    offline_rate, served_rate = statistics.median(offline_rates), statistics.median(served_rates)
    latencies.sort()
    same = sum(_same(answer, *offline[answer["id"]]) for answer in answers)
    return {"rows": len(work_items), "clients": clients, "rounds": rounds, "rows_per_s": round(served_rate, 1),
            "predict_rows_per_s_models_loaded": round(offline_rate, 1),
            "vs_predict": round(served_rate / offline_rate, 3),
            "vs_predict_rounds": [round(a / b, 3) for a, b in zip(served_rates, offline_rates)],
            "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
            "matches_predict": round(same / len(answers), 4)}


class Poster:
    """One keep-alive HTTP/1.1 connection posting to /v1/predict. The load generator shares the machine with
    the server, so it is http.client (0.2-0.3 core-ms a post here, against 1.6-2.0 for httpx): what it
    spends is taken from the server it measures."""

    def __init__(self, url):
        parts = urllib.parse.urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)

    def post(self, body):
        self.connection.request("POST", "/v1/predict", body=body, headers={"content-type": "application/json"})
        response = self.connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"serve answered {response.status}: {data[:300]!r}")
        return json.loads(data)["predictions"]

    def close(self):
        self.connection.close()


def _same(answer, status, prob_real):
    if answer["status"] != status:
        return False
    if answer["probs"] is None:
        return prob_real != prob_real  # NaN: predict did not score it either
    return abs(answer["probs"]["real"] - prob_real) <= 1e-5


def serve_alone(repeats=3, rows=400, demo_dir="data/demo", text_model="minilm", log=print):
    """The demo configuration's serve figure `repeats` times on one embedded set of rows (the noise of a
    shared machine shows as their spread); each result also holds its own offline predict figure."""
    from pipeline.bench import suite
    from pipeline.bench.cli import _text_model
    from pipeline.embed.config import EmbedConfig

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        data = suite.prepare_data(work / "data-demo", rows, "preview")
        config = EmbedConfig(data_dir=str(data), text_model=str(_text_model(text_model)),
                             clip_model=str(Path(demo_dir) / "clip"), cache_dir=str(work / "cache-demo"),
                             splits=("train",), batch_size=64, num_workers=-1, device="cpu",
                             part_rows=max(rows // 4, 64))
        embed_seconds = suite.time_embed(config)
        suite.bench_predict(work, "demo", 64, -1, "cpu", rows / embed_seconds)
        results = []
        for _ in range(repeats):
            results.append(bench_serve(work, "demo"))
            log(results[-1])
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the serve figure of `make bench` alone (demo configuration)")
    parser.add_argument("--repeats", type=int, default=3, help="serve figures on the same embedded rows")
    parser.add_argument("--rows", type=int, default=400, help="rows, as bench's --rows-demo")
    parser.add_argument("--demo-dir", default="data/demo", help="the demo data (make demo-data)")
    options = parser.parse_args()
    serve_alone(options.repeats, options.rows, options.demo_dir)
