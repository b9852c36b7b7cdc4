"""`serve`: a trained run behind an HTTP API and a page to try a post (FastAPI + uvicorn, the `serve` extra)."""
