"""Serve a model over HTTP with FastAPI: an ONNX model on the CPU while developing, its engine on the GPU in production.

    python scripts/serve.py model.onnx --port 8000            # or model.engine, same API
    curl localhost:8000/v1/model
    curl -X POST localhost:8000/v1/infer -H 'Content-Type: application/json' \\
         -d '{"inputs": {"input": [[[[0.0, ...]]]]}}'

`trtptq.runtime.load` gives one thread-safe model object (a pool of TensorRT
execution contexts, or one ONNX Runtime session); FastAPI runs plain `def`
endpoints in its thread pool, so `--threads` requests run at once. The model is
loaded before the server starts: a missing file or an engine without its GPU is
one line and exit 2. Bad requests (not JSON, not {"inputs": {name: array}}, a
ragged array, a wrong name, shape or dtype, no profile fits) are a 400 with a
one-line message. Needs `pip install 'trtptq[serve]'`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import anyio.to_thread
import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from trtptq.core.errors import TrtptqError
from trtptq.core.options import check_count
from trtptq.runtime import Model, load

USAGE = 'send {"inputs": {"<input name>": <nested list>}} as JSON'


class InferRequest(BaseModel):
    inputs: dict[str, list]  # input name -> nested lists (cast to the input's dtype)


def create_app(model: Model, threads: int) -> FastAPI:
    """The HTTP API over a loaded model (the caller closes it)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield

    app = FastAPI(title="trtptq model server", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": _request_error(exc.errors())})

    @app.get("/v1/model")
    def metadata() -> dict:
        tensors = lambda ts: [{"name": t.name, "dtype": str(t.dtype), "shape": list(t.shape)} for t in ts]  # noqa: E731
        return {"name": model.name, "kind": model.kind, "inputs": tensors(model.inputs), "outputs": tensors(model.outputs),
                "profiles": [{n: [list(s) for s in v] for n, v in p.items()} for p in model.profiles]}

    @app.post("/v1/infer")
    def infer(request: InferRequest) -> dict:
        try:
            outputs = model.infer(request.inputs)
        except TrtptqError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        return {"outputs": {name: np.asarray(array).tolist() for name, array in outputs.items()}}

    return app


def _request_error(errors: list[dict]) -> str:
    """pydantic's list of validation errors as one line: the first, where it is, and what to send."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])}); {USAGE}."
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "the request body"
    return f"{where}: {first['msg'].lower()}; {USAGE}."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="ONNX model or TensorRT engine (its .json manifest beside it)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=8, help="requests run at once (default 8)")
    p.add_argument("--instances", type=int, help="engine execution contexts per profile (default: --threads)")
    a = p.parse_args()
    try:
        check_count("--threads", a.threads, "thread")
        check_count("--instances", a.instances, "execution context")
        with load(a.model, instances=a.instances or a.threads) as model:
            uvicorn.run(create_app(model, a.threads), host=a.host, port=a.port, log_level="warning")
    except TrtptqError as e:
        print(f"serve.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
