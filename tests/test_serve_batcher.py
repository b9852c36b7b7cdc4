"""serve's batcher: a lone request does not wait for company, one with company on the way does, and the model
thread keeps its torch threads after the decoding threads ask for one each."""

import asyncio

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
from pipeline.device import decoding_pool  # noqa: E402
from pipeline.serve.batcher import Batcher, model_thread  # noqa: E402

LONG_WAIT_MS = 60_000  # far longer than the tests' own timeouts: a batch that waits it out fails them


def echo(titles, images, ids):
    return [{"id": i} for i in ids]


def batcher(under_way, max_wait_ms=LONG_WAIT_MS, predict=echo, **options):
    made = Batcher(predict, max_batch=8, max_wait_ms=max_wait_ms, **options)
    made.under_way = under_way
    return made


async def running(made, body):
    made.start()
    try:
        return await body()
    finally:
        await made.stop()


def test_a_lone_request_is_scored_without_waiting_for_company():
    made = batcher(under_way=lambda: 1)  # the server answers this request and no other

    async def body():
        return await asyncio.wait_for(made.submit(["a cat"], [None], ["only"]), timeout=10)

    assert asyncio.run(running(made, body)) == [{"id": "only"}]
    assert made.batches == 1


def test_a_request_waits_for_others_under_way_and_is_scored_with_them():
    made = batcher(under_way=lambda: 2, max_wait_ms=5_000)  # a second request is being read

    async def body():
        first = asyncio.ensure_future(made.submit(["a cat"], [None], ["first"]))
        await asyncio.sleep(0.2)  # the second arrives well after the first reached the queue
        second = made.submit(["a dog"], [None], ["second"])
        return await asyncio.wait_for(asyncio.gather(first, second), timeout=10)

    assert asyncio.run(running(made, body)) == [[{"id": "first"}], [{"id": "second"}]]
    assert made.batches == 1  # one batch: the first waited for the second


def test_the_model_thread_keeps_its_torch_threads_after_the_decoders_ask_for_one():
    decoder, seen = decoding_pool("decode"), []

    def predict(titles, images, ids):
        list(decoder.map(lambda _: torch.get_num_threads(), range(4)))  # decoding threads start: 1 thread each
        seen.append((torch.get_num_threads(), list(decoder.map(lambda _: torch.get_num_threads(), range(4)))))
        return echo(titles, images, ids)

    made = batcher(under_way=lambda: 1, predict=predict, executor=model_thread(3))

    async def body():
        for key in ("first", "second"):  # the second batch runs after the decoding threads set their count
            await asyncio.wait_for(made.submit(["a cat"], [None], [key]), timeout=10)

    asyncio.run(running(made, body))
    decoder.shutdown()
    assert seen == [(3, [1, 1, 1, 1])] * 2
