"""The engine runtime against TensorRT's and pycuda's APIs: types numpy lacks, 4-bit packing, one logger, TensorRT >= 10
(on the CPU, against the real TensorRT-RTX module); shape tensors, BF16 I/O, timing events, closing from another
thread and racing calls (on a GPU the engines run on, with pycuda)."""

import concurrent.futures
import subprocess
import sys
import textwrap
import threading

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from support import NO_ENGINE_GPU, engines_run_here, has_pycuda, make_model, needs_rtx, trtptq
from trtptq.core.errors import TrtptqError
from trtptq.runtime.engine import device_nbytes, from_device_bytes, to_device_bytes

needs_engine_gpu = pytest.mark.skipif(not (engines_run_here() and has_pycuda()), reason=NO_ENGINE_GPU + " (and pycuda)")


# ---- on the CPU ----

@needs_rtx
def test_every_tensorrt_type_has_a_numpy_dtype():
    """trt.nptype raises TypeError for BF16, FP8, INT4, FP4 and E8M0: the seam maps every member of the real enum."""
    from trtptq.core.trt import get_backend

    backend = get_backend("tensorrt_rtx")
    trt = backend.trt
    dtypes = {name: backend.numpy_dtype(member) for name, member in trt.DataType.__members__.items()}
    assert dtypes.keys() == trt.DataType.__members__.keys()
    assert dtypes["BF16"] == ml_dtypes.bfloat16 and dtypes["FP8"] == ml_dtypes.float8_e4m3fn
    assert dtypes["INT4"] == ml_dtypes.int4 and dtypes["FP4"] == ml_dtypes.float4_e2m1fn
    assert dtypes["E8M0"] == ml_dtypes.float8_e8m0fnu
    assert (dtypes["FLOAT"], dtypes["HALF"], dtypes["INT64"], dtypes["BOOL"]) == (np.float32, np.float16, np.int64, np.bool_)
    for name, member in trt.DataType.__members__.items():  # bytes on the device agree with TensorRT's own itemsize
        if member.itemsize is not None:
            assert device_nbytes((6,), dtypes[name]) == 6 * member.itemsize, name


@pytest.mark.parametrize("dtype, values", [
    (ml_dtypes.int4, [1, -2, 3, -8, 7]),
    (ml_dtypes.float4_e2m1fn, [0.5, -6.0, 1.5, 0.0, 3.0, -0.5, 2.0]),
    (ml_dtypes.bfloat16, [1.0, -2.5, 3.0e5]),
    (ml_dtypes.float8_e4m3fn, [0.5, -448.0, 3.0]),
    (np.bool_, [True, False, True]),
    (np.float32, [1.5, -2.0]),
])
def test_device_bytes_round_trip(dtype, values):
    array = np.array(values, dtype=dtype)
    raw = to_device_bytes(array)
    assert raw.dtype == np.uint8 and raw.size == device_nbytes(array.shape, np.dtype(dtype))
    back = from_device_bytes(raw, np.dtype(dtype), array.shape)
    assert back.dtype == dtype and np.array_equal(back.astype(np.float32), array.astype(np.float32))


def test_four_bit_values_pack_two_per_byte_first_in_the_low_nibble():
    raw = to_device_bytes(np.array([[1, -2], [3, -8], [7, 0]], dtype=ml_dtypes.int4))
    assert raw.tolist() == [0xE1, 0x83, 0x07] and device_nbytes((3, 2), np.dtype(ml_dtypes.int4)) == 3
    assert device_nbytes((5,), np.dtype(ml_dtypes.float4_e2m1fn)) == 3  # an odd count rounds up


@needs_rtx
def test_one_tensorrt_logger_per_process():
    """TensorRT keeps the first logger it is given and warns about others: every caller gets the same one."""
    from trtptq.core.trt import get_backend

    backend = get_backend("tensorrt_rtx")
    assert backend.logger() is backend.logger()


def test_tensorrt_older_than_10_is_refused_in_one_line(tmp_path):
    """TensorRT 8.6 shares a profile between contexts only with PROFILE_SHARING_0806: trtptq takes 10 and newer.
    (TensorRT 8.6 cannot be installed here: a module that says it is 8.6.1 stands in for it.)"""
    (tmp_path / "old" / "tensorrt").mkdir(parents=True)
    (tmp_path / "old" / "tensorrt" / "__init__.py").write_text('__version__ = "8.6.1"\n')
    code = textwrap.dedent("""
        from trtptq.core.errors import TrtptqError
        from trtptq.core.trt import get_backend
        try:
            get_backend("tensorrt")
        except TrtptqError as e:
            print(e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(tmp_path / "old"), "PATH": ""})
    assert r.returncode == 0, r.stderr
    assert "tensorrt 8.6.1 is older than 10.0, which trtptq needs" in r.stdout and "pip install 'tensorrt>=10'" in r.stdout


# ---- on a GPU the engine runs on ----

@pytest.fixture(scope="module")
def mnist_engine(mnist, tmp_path_factory):
    """The MNIST CNN as an engine for batches of 1 to 8, built by `trtptq build` (with its manifest)."""
    path = tmp_path_factory.mktemp("engine") / "m.engine"
    r = trtptq("build", mnist[0], "-o", path, "--shapes", "input:1x1x28x28/8x1x28x28/8x1x28x28", "--no-progress")
    assert r.returncode == 0, r.stderr
    return path


def _build(model: onnx.ModelProto, path, shape_inputs: dict | None = None):
    """An engine built with the TensorRT API directly (shape-tensor profiles are not a `trtptq build` option)."""
    from trtptq.core.trt import get_backend

    backend = get_backend()
    trt = backend.trt
    builder = trt.Builder(backend.logger())
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, backend.logger())
    assert parser.parse(model.SerializeToString()), parser.get_error(0)
    config = builder.create_builder_config()
    if shape_inputs:
        profile = builder.create_optimization_profile()
        for name, values in shape_inputs.items():
            profile.set_shape_input(name, values, values, values)
        config.add_optimization_profile(profile)
    path.write_bytes(bytes(builder.build_serialized_network(network, config)))
    return path


@pytest.mark.gpu
@needs_engine_gpu
def test_shape_tensor_input_and_output_live_on_the_host(tmp_path):
    from trtptq.runtime import load

    nodes = [helper.make_node("Reshape", ["x", "target"], ["y"]), helper.make_node("Shape", ["y"], ["dims"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
                               helper.make_tensor_value_info("target", TensorProto.INT64, [2])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                        helper.make_tensor_value_info("dims", TensorProto.INT64, [2])])
    engine = _build(model, tmp_path / "reshape.engine", {"target": [3, 4]})
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    with load(engine) as m:
        out = m.infer({"x": x, "target": np.array([3, 4], np.int64)})
    np.testing.assert_array_equal(out["y"], x.reshape(3, 4))
    assert out["dims"].tolist() == [3, 4]


@pytest.mark.gpu
@needs_engine_gpu
def test_bf16_inputs_and_outputs(tmp_path):
    from trtptq.runtime import load

    nodes = [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT), helper.make_node("Relu", ["f"], ["r"]),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.BFLOAT16)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 8])], opset=21)
    x = np.linspace(-4, 4, 16, dtype=np.float32).reshape(2, 8)
    with load(_build(model, tmp_path / "bf16.engine")) as m:
        assert m.inputs[0].dtype == ml_dtypes.bfloat16
        out = m.infer({"x": x.astype(ml_dtypes.bfloat16)})["y"]  # float values are cast too, as JSON clients send
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out.astype(np.float32), np.maximum(x.astype(ml_dtypes.bfloat16).astype(np.float32), 0))


@pytest.mark.gpu
@needs_engine_gpu
def test_timed_calls_from_threads_and_close_from_another_thread_leave_nothing_behind(mnist_engine, tmp_path):
    """pycuda warns "... in out-of-thread context could not be cleaned up" for each object it cannot free: none here."""
    code = textwrap.dedent(f"""
        import concurrent.futures, threading, warnings
        import numpy as np
        from trtptq.runtime import load
        warnings.simplefilter("always")
        feed = {{"input": np.zeros((8, 1, 28, 28), np.float32)}}
        model = load({str(mnist_engine)!r}, instances=2)
        def timed(_):
            t = {{}}
            model.infer(feed, t)
            return set(t) == {{"h2d", "compute", "d2h"}}
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert all(pool.map(timed, range(200)))
        closer = threading.Thread(target=model.close)
        closer.start()
        closer.join()
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert "could not be cleaned up" not in r.stderr and "UserWarning" not in r.stderr, r.stderr


@pytest.mark.gpu
@needs_engine_gpu
def test_close_while_calls_run_waits_for_them_and_refuses_the_rest(mnist, mnist_engine):
    from trtptq.runtime import load

    model = load(mnist_engine, instances=1)
    feed = {"input": mnist[1][:8]}
    started = threading.Event()

    def call(_):
        started.set()
        try:
            return model.infer(feed)["logits"].shape == (8, 10)
        except TrtptqError as e:
            return "is closed" in str(e)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = [pool.submit(call, k) for k in range(200)]
        started.wait()
        closer = threading.Thread(target=model.close)
        closer.start()
        closer.join(timeout=60)
        assert not closer.is_alive(), "close() blocked"
        assert all(f.result(timeout=60) for f in results)
