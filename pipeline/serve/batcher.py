"""Micro-batching: posts of concurrent requests are scored together, so that throughput under load
approaches offline `predict`'s, while a lone request waits at most `max_wait_ms` for company, and not
at all when no other request is under way.

One worker task owns the model: it takes the first waiting request, gathers others until the batch
holds `max_batch` posts or `max_wait_ms` have passed, and runs `predict` (decoding and scoring) on the
model thread (`model_thread`: the model is never called from two threads at once). A batch that
raises is retried one request at a time, so a post that breaks the model fails only its own request.
"""

import asyncio
import concurrent.futures
import logging
from dataclasses import dataclass, field

import torch

from pipeline.device import pin_torch_threads

log = logging.getLogger("pipeline.serve")


@dataclass
class Job:
    titles: list
    images: list
    ids: list
    done: asyncio.Future = field(default=None)


def model_thread(torch_threads=None):
    """The one thread that runs the model, with `torch_threads` torch threads pinned (`pin_torch_threads`;
    default: as many as the calling thread has).

    Load the model on it too (`serve` does): torch's CPU threads are OpenMP's, and OpenMP gives every thread
    that runs parallel work a team of its own. Once a second team exists and the teams' threads outnumber
    the cores, libgomp stops spinning between parallel regions in all of them, so each operation pays for
    waking its threads. The demo's text tower took 3.5 ms a post on batches of 15 when the model was loaded
    on the main thread and 2.4 ms when it was loaded on this one (2-core bench machine; docs/serve.md)."""
    threads = torch.get_num_threads() if torch_threads is None else torch_threads
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model",
                                                 initializer=pin_torch_threads, initargs=(threads,))


class Batcher:
    def __init__(self, predict, max_batch, max_wait_ms, executor=None):
        """`predict(titles, images, ids)` -> a list of result dicts, one per post, in order, run on `executor`
        (default: a new `model_thread()`), which the batcher shuts down when it stops."""
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue = None
        self.worker = None
        self.executor = executor or model_thread()
        self.under_way = None  # () -> requests the server is answering (set by the app); None: always wait
        self.carried = None  # a job that did not fit the last batch: first in the next
        self.batches = 0  # batches scored (the tests read it to see requests were batched)

    def start(self):
        self.queue = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self):
        """After the server stopped taking requests: the worker ends, the model thread with it."""
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def submit(self, titles, images, ids):
        job = Job(list(titles), list(images), list(ids), asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.done

    async def _work(self):
        while True:
            jobs = await self._gather()
            await self._score([job for job in jobs if not job.done.done()])  # a timed-out request is gone

    async def _gather(self):
        first = self.carried or await self.queue.get()
        self.carried = None
        jobs, rows = [first], len(first.titles)
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while rows < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0 or not self._company_coming(len(jobs)):
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if rows + len(job.titles) > self.max_batch:
                self.carried = job
                break
            jobs.append(job)
            rows += len(job.titles)
        return jobs

    def _company_coming(self, in_hand):
        """Whether waiting can bring more posts: the server has requests under way besides the `in_hand` ones
        (being read, or queued). A lone client's post is scored at once instead of waiting for nobody."""
        return self.under_way is None or self.under_way() > in_hand

    async def _score(self, jobs):
        if not jobs:
            return
        loop = asyncio.get_running_loop()
        titles = [t for job in jobs for t in job.titles]
        images = [i for job in jobs for i in job.images]
        ids = [i for job in jobs for i in job.ids]
        try:
            results = await loop.run_in_executor(self.executor, self.predict, titles, images, ids)
        except Exception:  # noqa: BLE001 - one request's posts must not fail the others: retry each alone
            if len(jobs) == 1:
                log.exception("scoring a request failed")
                _settle(jobs[0], error=RuntimeError("the model could not score this request"))
                return
            for job in jobs:
                await self._score([job])
            return
        self.batches += 1
        start = 0
        for job in jobs:
            _settle(job, results[start:start + len(job.titles)])
            start += len(job.titles)


def _settle(job, results=None, error=None):
    if job.done.done():  # the request timed out meanwhile
        return
    if error is not None:
        job.done.set_exception(error)
    else:
        job.done.set_result(results)
