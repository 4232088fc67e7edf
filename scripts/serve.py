"""Serve a model over HTTP with FastAPI: an ONNX model on the CPU while developing, its engine on the GPU in production.

    python scripts/serve.py model.onnx --port 8000            # or model.engine, same API
    curl localhost:8000/v1/model
    curl -X POST localhost:8000/v1/infer -H 'Content-Type: application/json' \\
         -d '{"inputs": {"input": [[[[0.0, ...]]]]}}'

`trtptq.runtime.load` gives one thread-safe model object (a pool of TensorRT
execution contexts, or one ONNX Runtime session); FastAPI runs plain `def`
endpoints in its thread pool, so `--threads` requests run at once. Bad input
(wrong name, shape, dtype, or no profile fits) is a 400 with trtptq's one-line
message. Needs `pip install 'trtptq[serve]'`.
"""

from __future__ import annotations

import argparse
import contextlib

import anyio.to_thread
import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from trtptq.core.errors import TrtptqError
from trtptq.runtime import load


class InferRequest(BaseModel):
    inputs: dict[str, list]  # input name -> nested lists (cast to the input's dtype)


def create_app(model_path: str, instances: int, threads: int) -> FastAPI:
    state = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        with load(model_path, instances=instances) as model:
            state["model"] = model
            yield

    app = FastAPI(title="trtptq model server", lifespan=lifespan)

    @app.get("/v1/model")
    def metadata() -> dict:
        m = state["model"]
        tensors = lambda ts: [{"name": t.name, "dtype": str(t.dtype), "shape": list(t.shape)} for t in ts]  # noqa: E731
        return {"name": m.name, "kind": m.kind, "inputs": tensors(m.inputs), "outputs": tensors(m.outputs),
                "profiles": [{n: [list(s) for s in v] for n, v in p.items()} for p in m.profiles]}

    @app.post("/v1/infer")
    def infer(request: InferRequest) -> dict:
        try:
            feed = {name: np.asarray(values) for name, values in request.inputs.items()}
            outputs = state["model"].infer(feed)
        except (TrtptqError, ValueError) as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        return {"outputs": {name: array.tolist() for name, array in outputs.items()}}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="ONNX model or TensorRT engine (its .json manifest beside it)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=8, help="requests run at once (default 8)")
    p.add_argument("--instances", type=int, help="engine execution contexts per profile (default: --threads)")
    a = p.parse_args()
    uvicorn.run(create_app(a.model, a.instances or a.threads, a.threads), host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
