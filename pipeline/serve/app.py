"""The HTTP API around one loaded `Classifier`: endpoints, request and answer types, error bodies.

`create_app(classifier, config, token)` returns the ASGI app `serve` runs (and the tests drive
in-process). Every error is a JSON object {"error": "..."} that names the field or limit and says
what to do; none carries a server path or echoes the request back.
"""

import asyncio
import contextlib
from dataclasses import dataclass

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pipeline.device import decoding_pool
from pipeline.serve.batcher import Batcher, model_thread
from pipeline.serve.limits import BearerAuth, BodyLimit, ConcurrencyLimit
from pipeline.serve.page import PAGE, PAGE_POLICY
from pipeline.serve.posts import answer, clean_title, decode_image

RETRY_AFTER_S = 1


class Post(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, description="your id for the post, returned as given (default: its position)")
    title: str | None = Field(None, description="the post's title; null or blank for none")
    image: str | None = Field(None, description="the image file's bytes, base64; null for none")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    posts: list[Post]


class Prediction(BaseModel):
    id: str
    probs: dict[str, float] | None = Field(description="{class name: probability}; null when not scored")
    pred: int | None
    pred_name: str | None
    status: str = Field(description="ok, ok_text_only, ok_image_only, or why the post was not scored")


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: dict


@dataclass
class Counters:
    """Predict requests that reached the model queue, and those answered: equal once the server is idle."""
    started: int = 0
    answered: int = 0


def problem(error):
    """One pydantic error as 'field: what is wrong', without the input (it may be megabytes, or a secret)."""
    if error["type"] == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "decode error")
        return f"body: not valid JSON (at character {error['loc'][-1]}: {detail})"
    return f"{'.'.join(str(part) for part in error['loc'][1:]) or 'body'}: {error['msg']}"


def model_info(classifier, class_names):
    """What `GET /v1/model` says: content hashes and settings, never a server path."""
    temperature = classifier.temperature
    return {"run": classifier.run_dir.name, "classes": class_names, "threshold": classifier.threshold,
            "calibration": None if temperature is None else {"method": "temperature", "temperature": temperature},
            "encoders": classifier.fingerprint, "modalities": list(classifier.model.head.config.modalities),
            "half_posts": bool(classifier.model.head.supports_missing)}


def scorer(classifier, class_names, decoder):
    """The batcher's `predict` (in the model thread): the batch's image bytes decoded on `decoder`'s threads,
    then the batch scored.

    Decoding belongs to the batch, not to the request: a request joins the queue as soon as it is parsed, so
    batches fill (16 one-post clients: about 15 posts a batch, against 8 when each request decoded first),
    and on a CPU the decoders and the encoders take the cores in turn instead of stalling each other's
    threads (docs/serve.md, "Throughput")."""
    settings = classifier.settings

    def predict(titles, images, ids):
        decoded = list(decoder.map(lambda data: decode_image(data, settings), images))
        frame = classifier.predict([clean_title(t) for t in titles], decoded, ids=ids)
        return [answer(row, class_names) for row in frame.to_dict("records")]
    return predict


def create_app(classifier, config, token=None, executor=None):
    """`executor`: the model thread the classifier was loaded on (`batcher.model_thread`); default a new one."""
    class_names = list(classifier.class_names)
    decoder = decoding_pool("decode")  # scorer() decodes each batch on these, in turn with the model
    batcher = Batcher(scorer(classifier, class_names, decoder), config.max_batch, config.max_wait_ms,
                      executor or model_thread())
    counters = Counters()
    short_info = {"run": classifier.run_dir.name, "classes": class_names, "threshold": classifier.threshold}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        app.state.ready = True
        yield
        app.state.ready = False
        await batcher.stop()
        decoder.shutdown(wait=True)

    app = FastAPI(title="mmcache serve", version="1", lifespan=lifespan,
                  description="Classify posts (a title and an image) with a trained mmcache run.")
    app.state.ready, app.state.counters, app.state.batcher = False, counters, batcher

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, error):
        problems = [problem(e) for e in error.errors()]
        return JSONResponse(status_code=422, content={"error": "; ".join(problems) + "; see GET /docs for the schema"})

    @app.exception_handler(HTTPException)
    async def http_error(request, error):
        return JSONResponse(status_code=error.status_code, content={"error": error.detail},
                            headers=getattr(error, "headers", None))

    async def score(titles, images, ids):
        if not titles:  # nothing to wait for
            return {"predictions": [], "model": short_info}
        counters.started += 1

        try:
            results = await asyncio.wait_for(batcher.submit(titles, images, ids), config.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"not answered within {config.request_timeout_s:g} s (the server's "
                                "--request-timeout-s); retry later", headers={"Retry-After": str(RETRY_AFTER_S)})
        except RuntimeError as error:
            raise HTTPException(500, str(error))
        counters.answered += 1
        return {"predictions": results, "model": short_info}

    @app.post("/v1/predict", response_model=PredictResponse, summary="classify posts (JSON, images in base64)")
    async def predict(request: PredictRequest):
        posts = request.posts
        if len(posts) > config.max_posts:
            raise HTTPException(413, f"posts: {len(posts)} posts; at most {config.max_posts} per request (the "
                                "server's --max-posts); split them over several requests")
        ids = [post.id if post.id is not None else str(i) for i, post in enumerate(posts)]
        return await score([p.title for p in posts], [p.image for p in posts], ids)

    @app.post("/v1/predict/form", response_model=PredictResponse, summary="classify one post (multipart form)")
    async def predict_form(title: str | None = Form(None), image: UploadFile | None = File(None),
                           id: str | None = Form(None)):
        data = await image.read() if image is not None else None
        if image is not None and not image.filename and not data:
            data = None  # a form whose file field was left empty: no image
        return await score([title], [data], [id if id is not None else "0"])

    @app.get("/healthz", summary="the process is alive")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", summary="the model is loaded and the server takes requests")
    async def readyz():
        if not app.state.ready:
            raise HTTPException(503, "not ready: the model is loading or the server is stopping",
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        return {"status": "ready"}

    @app.get("/v1/model", summary="the run, its encoders, classes, threshold and calibration")
    async def model():
        return model_info(classifier, class_names)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff"})

    guarded = ConcurrencyLimit(BodyLimit(app, int(config.max_body_mb * 2**20)), config.max_concurrency,
                               RETRY_AFTER_S)
    batcher.under_way = lambda: guarded.active  # requests past the token check, read or queued or answered
    outer = BearerAuth(guarded, token) if token else guarded
    outer.app_state = app.state  # the CLI and the tests read the counters and the batcher from here
    return outer
