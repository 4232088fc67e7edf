"""Bad options, ranges files, output paths and data scripts: one line naming the option, the value and the fix,
exit 2, no traceback, no file left behind, and nothing loaded or calibrated first."""

import json
import os
import pathlib
from types import SimpleNamespace

import numpy as np
import pytest

from support import assert_one_line_error, trtptq
from trtptq.core.errors import TrtptqError
from trtptq.demo import MNIST_MODEL
from trtptq.engine.options import BuildOptions
from trtptq.evaluation.compare import CompareOptions
from trtptq.export.triton import TritonOptions
from trtptq.pipelines import Target
from trtptq.quantization.options import QuantizeOptions

# A data script that leaves a mark when anything imports it: where it is --data, no data may have been read.
SENTINEL = """\
import pathlib
import numpy as np
pathlib.Path(__file__).with_name("data-was-read").touch()

def load_data():
    yield {"input": np.zeros((4, 1, 28, 28), np.float32)}
"""



@pytest.fixture
def p(tmp_path):
    """Inputs of every case: the data script, a file where a folder should be, a read-only folder, ranges files."""
    (tmp_path / "data.py").write_text(SENTINEL)
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    if os.geteuid() == 0:  # root writes into chmod-555 folders; sysfs refuses new files even to root
        readonly = pathlib.Path("/sys")
    else:
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
    ranges = {"format": "trtptq-ranges", "version": 1, "method": "entropy", "options": {},
              "tensors": {"input": {"amax": 2.8, "min": -0.4, "max": 2.8, "count": 100}}}
    for name, entry in {"no_amax": {"min": 0.0, "max": 1.0, "count": 1},
                        "nan_amax": {"amax": float("nan"), "min": 0.0, "max": 1.0, "count": 1},
                        "inf_amax": {"amax": float("inf"), "min": 0.0, "max": 1.0, "count": 1},
                        "negative_amax": {"amax": -1.5, "min": 0.0, "max": 1.0, "count": 1},
                        "text_amax": {"amax": "2.5", "min": 0.0, "max": 1.0, "count": 1}}.items():
        body = {**ranges, "tensors": {**ranges["tensors"], "/0/Conv_output_0": entry}}
        (tmp_path / f"{name}.json").write_text(json.dumps(body))
    (tmp_path / "no_tensors.json").write_text(json.dumps({k: v for k, v in ranges.items() if k != "tensors"}))
    return SimpleNamespace(data=tmp_path / "data.py", file=tmp_path / "file", folder=tmp_path / "folder",
                           readonly=readonly, ranges=tmp_path)


CALIBRATE = ("calibrate", MNIST_MODEL)
QUANTIZE = ("quantize", MNIST_MODEL)
BUILD_INT8 = ("build", MNIST_MODEL, "--int8")
SENSITIVITY = ("sensitivity", MNIST_MODEL)
COMPARE = ("compare", MNIST_MODEL, MNIST_MODEL)
BENCH = ("bench", MNIST_MODEL)
EXPORT = ("export", "triton", MNIST_MODEL, "--repository", "repo")
RUN = ("run", MNIST_MODEL, "-o", "out.npz")
NOT_WRITABLE = "is not writable"
NO_FOLDER = "cannot create the folder for"

CASES = {
    # option values, checked by CalibrationOptions before anything is loaded
    "percentile_zero": (lambda p: [*CALIBRATE, "--data", p.data, "--percentile", 0],
                        "--percentile 0.0 is outside (0, 100]; give the share of |x| to keep unclipped, e.g. --percentile 99.99"),
    "percentile_over_100": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx", "--method", "percentile",
                                       "--percentile", 100.5], "--percentile 100.5 is outside (0, 100]"),
    "num_bins_not_power_of_two": (lambda p: [*CALIBRATE, "--data", p.data, "--num-bins", 1000],
                                  "--num-bins 1000 is not a power of two from 256 to 16384; use e.g. --num-bins 2048"),
    "num_bins_too_few_for_entropy": (lambda p: [*CALIBRATE, "--data", p.data, "--num-bins", 128],
                                     "--num-bins 128 is not a power of two from 256 to 16384"),
    "batch_size_zero": (lambda p: [*CALIBRATE, "--data", p.data, "--batch-size", 0],
                        "--batch-size 0 is not a positive number; give at least 1 sample per batch, or leave --batch-size out"),
    "batch_size_negative": (lambda p: [*BUILD_INT8, "-o", "m.engine", "--data", p.data, "--batch-size", -4],
                            "--batch-size -4 is not a positive number"),
    "num_samples_zero": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx", "--num-samples", 0],
                         "--num-samples 0 is not a positive number; give at least 1 sample"),
    "num_samples_negative": (lambda p: [*CALIBRATE, "--data", p.data, "--num-samples", -1],
                             "--num-samples -1 is not a positive number"),
    "memory_budget_zero": (lambda p: [*CALIBRATE, "--data", p.data, "--memory-budget", "0"],
                           "--memory-budget 0 is not a positive size"),
    "compare_batch_size_zero": (lambda p: ["compare", MNIST_MODEL, MNIST_MODEL, "--data", p.data, "--batch-size", 0],
                                "--batch-size 0 is not a positive number"),
    # ranges files, checked before the model is loaded
    "ranges_no_amax": (lambda p: [*QUANTIZE, "--ranges", p.ranges / "no_amax.json", "-o", "q.onnx"],
                       "no_amax.json: tensor '/0/Conv_output_0' has no amax; fix it, or write the file again with "
                       "`trtptq calibrate`"),
    "ranges_nan_amax": (lambda p: [*QUANTIZE, "--ranges", p.ranges / "nan_amax.json", "-o", "q.onnx"],
                        "nan_amax.json: tensor '/0/Conv_output_0' has amax nan, but amax must be a finite number >= 0"),
    "ranges_inf_amax": (lambda p: [*BUILD_INT8, "-o", "m.engine", "--ranges", p.ranges / "inf_amax.json"],
                        "inf_amax.json: tensor '/0/Conv_output_0' has amax inf, but amax must be a finite number >= 0"),
    "ranges_negative_amax": (lambda p: [*QUANTIZE, "--ranges", p.ranges / "negative_amax.json", "-o", "q.onnx"],
                             "tensor '/0/Conv_output_0' has amax -1.5, but amax must be a finite number >= 0"),
    "ranges_text_amax": (lambda p: [*QUANTIZE, "--ranges", p.ranges / "text_amax.json", "-o", "q.onnx"],
                         "tensor '/0/Conv_output_0' has a value that is not a number (amax='2.5'"),
    "ranges_no_tensors": (lambda p: [*QUANTIZE, "--ranges", p.ranges / "no_tensors.json", "-o", "q.onnx"],
                          "no_tensors.json lacks its \"method\" name or its \"tensors\" table"),
    # every output of every command, checked before any work
    "calibrate_output_under_a_file": (lambda p: [*CALIBRATE, "--data", p.data, "-o", p.file / "r.json"], NO_FOLDER),
    "calibrate_output_is_a_folder": (lambda p: [*CALIBRATE, "--data", p.data, "-o", p.folder], "is a folder"),
    "calibrate_output_read_only": (lambda p: [*CALIBRATE, "--data", p.data, "-o", p.readonly / "r.json"], NOT_WRITABLE),
    "calibrate_cache_read_only": (lambda p: [*CALIBRATE, "--data", p.data, "--calibration-cache", p.readonly / "c"],
                                  NOT_WRITABLE),
    "quantize_output_read_only": (lambda p: [*QUANTIZE, "--data", p.data, "-o", p.readonly / "q.onnx"], NOT_WRITABLE),
    "quantize_save_ranges_under_a_file": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx",
                                                     "--save-ranges", p.file / "r.json"], NO_FOLDER),
    "quantize_cache_read_only": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx",
                                            "--calibration-cache", p.readonly / "c"], NOT_WRITABLE),
    "quantize_report_under_a_file": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx", "--report", p.file / "rep"],
                                     NO_FOLDER),
    "build_output_read_only": (lambda p: [*BUILD_INT8, "--data", p.data, "-o", p.readonly / "m.engine"], NOT_WRITABLE),
    "build_save_onnx_under_a_file": (lambda p: [*BUILD_INT8, "--data", p.data, "-o", "m.engine",
                                                "--save-onnx", p.file / "q.onnx"], NO_FOLDER),
    "build_timing_cache_read_only": (lambda p: [*BUILD_INT8, "--data", p.data, "-o", "m.engine",
                                                "--timing-cache", p.readonly / "t.cache"], NOT_WRITABLE),
    "build_calibration_cache_under_a_file": (lambda p: ["build", MNIST_MODEL, "--implicit-int8", "--data", p.data,
                                                        "-o", "m.engine", "--calibration-cache", p.file / "c"], NO_FOLDER),
    "compare_report_read_only": (lambda p: ["compare", MNIST_MODEL, MNIST_MODEL, "--data", p.data,
                                            "--report", p.readonly / "rep"], NO_FOLDER),
    "demo_out_under_a_file": (lambda p: ["demo", "--out", p.file / "demo"], NO_FOLDER),
    # accuracy targets and thresholds no model can reach, or percentages where fractions are meant
    "target_snr_above_exact": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx", "--target", "snr_db=1000"],
                               "--target snr_db=1000 is above 100 dB"),
    "target_cosine_above_1": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx", "--target", "cosine=1.5"],
                              "--target cosine=1.5 is outside [-1, 1], the range of a cosine similarity"),
    "target_accuracy_as_percentage": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx", "--target", "accuracy=99"],
                                      "--target accuracy=99 is outside [0, 1]; accuracy is a fraction from 0 to 1, not "
                                      "a percentage: 99% is --target accuracy=0.99"),
    "target_agreement_negative": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx",
                                             "--target", "top1_agreement=-0.5"],
                                  "top1_agreement is a fraction from 0 to 1, e.g. --target top1_agreement=0.99"),
    "target_snr_infinite": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx", "--target", "snr_db=inf"],
                            "--target snr_db=inf is not a finite number"),
    "target_unknown_metric": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx", "--target", "speed=2"],
                              "bad --target 'speed=2': use METRIC=VALUE"),
    "target_not_a_number": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx", "--target", "cosine=high"],
                            "bad --target 'cosine=high': 'high' is not a number"),
    "fail_below_agreement_as_percentage": (lambda p: [*COMPARE, "--data", p.data, "--fail-below", "top5_agreement=99.5"],
                                           "99.5% is --fail-below top5_agreement=0.995"),
    "fail_below_cosine_below_minus_1": (lambda p: [*COMPARE, "--data", p.data, "--fail-below", "cosine=-2"],
                                        "--fail-below cosine=-2 is outside [-1, 1]"),
    "compare_atol_negative": (lambda p: [*COMPARE, "--data", p.data, "--atol", -1],
                              "--atol -1.0 is not a tolerance; give a finite number >= 0"),
    # counts and durations of the newer commands
    "quantize_sensitivity_samples_zero": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx",
                                                     "--sensitivity-samples", 0],
                                          "--sensitivity-samples 0 is not a positive number"),
    "sensitivity_samples_zero": (lambda p: [*SENSITIVITY, "--data", p.data, "--sensitivity-samples", 0],
                                 "--sensitivity-samples 0 is not a positive number"),
    "sensitivity_top_zero": (lambda p: [*SENSITIVITY, "--data", p.data, "--top", 0],
                             "--top 0 is not a positive number; give at least 1 layer to print"),
    "bench_threads_zero": (lambda p: [*BENCH, "--threads", 0], "--threads 0 is not a positive number"),
    "bench_duration_negative": (lambda p: [*BENCH, "--duration", -1], "--duration -1.0 is not positive"),
    "bench_warmup_negative": (lambda p: [*BENCH, "--warmup", -1], "--warmup -1.0 is negative"),
    "bench_instances_zero": (lambda p: [*BENCH, "--instances", 0], "--instances 0 is not a positive number"),
    "bench_batch_size_zero": (lambda p: [*BENCH, "--batch-size", 0], "--batch-size 0 is not a positive number"),
    "bench_bad_shapes": (lambda p: [*BENCH, "--shapes", "input:1x28/4"], "bad --shapes entry 'input:1x28/4'"),
    "run_batch_size_zero": (lambda p: [*RUN, "--data", p.data, "--batch-size", 0],
                            "--batch-size 0 is not a positive number; give at least 1 sample per call"),
    "run_num_samples_negative": (lambda p: [*RUN, "--data", p.data, "--num-samples", -3],
                                 "--num-samples -3 is not a positive number"),
    "export_max_batch_size_negative": (lambda p: [*EXPORT, "--name", "m", "--max-batch-size", -1],
                                       "--max-batch-size -1 is negative; use 0 (no batching) or more"),
    "export_instances_zero": (lambda p: [*EXPORT, "--name", "m", "--instances", 0],
                              "--instances 0 is not a positive number"),
    "export_queue_delay_negative": (lambda p: [*EXPORT, "--name", "m", "--dynamic-batching", "--max-queue-delay-us", -1],
                                    "--max-queue-delay-us -1 is negative"),
    "export_name_with_a_slash": (lambda p: [*EXPORT, "--name", "a/b"],
                                 "--name 'a/b' is not a model name Triton accepts"),
    "export_name_parent_folder": (lambda p: [*EXPORT, "--name", ".."], "--name '..' is not a model name Triton accepts"),
    # input files, named with their option before anything is loaded
    "calibrate_data_missing": (lambda p: [*CALIBRATE, "--data", "nope.npz"], "--data nope.npz does not exist"),
    "calibrate_data_script_missing": (lambda p: [*CALIBRATE, "--data", "nope.py:load"], "--data nope.py:load does not exist"),
    "calibrate_model_missing": (lambda p: ["calibrate", "nope.onnx", "--data", p.data], "model nope.onnx does not exist"),
    "quantize_eval_data_missing": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx", "--eval-data", "nope.npz",
                                              "--target", "cosine=0.99"], "--eval-data nope.npz does not exist"),
    "sensitivity_eval_data_missing": (lambda p: [*SENSITIVITY, "--data", p.data, "--eval-data", "nope"],
                                      "--eval-data nope does not exist"),
    "quantize_plugin_missing": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx", "--plugin", "nope.py"],
                                "plugin file nope.py does not exist"),
    "build_plugin_library_missing": (lambda p: [*BUILD_INT8, "--data", p.data, "-o", "m.engine", "--plugins", "nope.so"],
                                     "--plugins nope.so does not exist"),
    "compare_candidate_missing": (lambda p: ["compare", MNIST_MODEL, "nope.onnx", "--data", p.data],
                                  "candidate nope.onnx does not exist"),
    "compare_data_missing": (lambda p: [*COMPARE, "--data", "nope.npz"], "--data nope.npz does not exist"),
    "run_data_missing": (lambda p: [*RUN, "--data", "nope.npz"], "--data nope.npz does not exist"),
    "run_model_missing": (lambda p: ["run", "nope.engine", "-o", "out.npz", "--data", p.data],
                          "model nope.engine does not exist"),
    "bench_second_model_missing": (lambda p: [*BENCH, "nope.engine"], "model nope.engine does not exist"),
    "export_model_missing": (lambda p: ["export", "triton", "nope.plan", "--repository", "repo", "--name", "m"],
                             "model nope.plan does not exist"),
    # argparse's own errors: one line too, naming the command
    "not_an_int": (lambda p: [*QUANTIZE, "--data", p.data, "-o", "q.onnx", "--batch-size", "many"],
                   "quantize: argument --batch-size: invalid int value: 'many'; see `trtptq quantize --help`"),
    "required_option_missing": (lambda p: [*QUANTIZE, "--data", p.data],
                                "quantize: the following arguments are required: -o/--output"),
    "mean_not_numbers": (lambda p: [*CALIBRATE, "--data", p.data, "--mean", "0.5,x"],
                         "argument --mean: not a list of numbers: '0.5,x'"),
    "int8_and_implicit_int8": (lambda p: [*BUILD_INT8, "--implicit-int8", "--data", p.data, "-o", "m.engine"],
                               "--int8 (Q/DQ) and --implicit-int8 (TensorRT <= 10 calibrates) exclude each other"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_option_is_one_line_before_any_work(p, tmp_path, case):
    argv, expect = CASES[case]
    before = sorted(tmp_path.rglob("*"))
    r = trtptq(*argv(p), "--no-progress", cwd=tmp_path)
    assert_one_line_error(r, expect)
    assert sorted(tmp_path.rglob("*")) == before  # no output, no .name.*.tmp, and the data script never ran


@pytest.mark.parametrize("script, expect", [
    ("import numpy as np\n\nraise RuntimeError('no GPU here')\n",
     "loader.py:3 failed to import: RuntimeError: no GPU here. Fix the script or what it imports."),
    ("import numpy_extras_that_do_not_exist\n",
     "loader.py:1 failed to import: ModuleNotFoundError: No module named 'numpy_extras_that_do_not_exist'."),
    ("def load_data(:\n    pass\n", "loader.py:1 failed to import: SyntaxError:"),
    ("import numpy as np\n\ndef load_data():\n    yield {'input': np.zeros((2, 1, 28, 28), np.float32)}\n"
     "    raise OSError('shard 7 is corrupt\\nsecond line')\n",
     "loader.py:5: load_data() raised OSError: shard 7 is corrupt second line. Fix the script; load_data() must yield"),
], ids=["raises_on_import", "missing_module", "syntax_error", "raises_while_yielding"])
def test_data_script_errors_name_the_script_and_line(tmp_path, script, expect):
    (tmp_path / "loader.py").write_text(script)
    before = sorted(tmp_path.rglob("*"))
    r = trtptq("calibrate", MNIST_MODEL, "--data", "loader.py", "--batch-size", 2, "-o", "r.json", "--no-progress",
               cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("trtptq: error: data script ") and expect in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert [f for f in sorted(tmp_path.rglob("*")) if "__pycache__" not in f.parts] == before


def test_dynamic_build_without_shapes_warns_once(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install 'trtptq[rtx]'")
    r = trtptq("build", MNIST_MODEL, "-o", "m.engine", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("trtptq: warning: ")]
    assert warnings == [
        "trtptq: warning: input input has dynamic dimensions (-1x1x28x28) and no --shapes entry: the engine's profile "
        "is min = opt = max = 1x1x28x28, so it runs at that shape only. Pass the shapes it will run at as --shapes "
        "input:MIN/OPT/MAX, e.g. --shapes input:1x1x28x28/8x1x28x28/32x1x28x28."]
    report = json.loads((tmp_path / "m.engine.json").read_text())
    assert report["profiles"] == [{"input": [[1, 1, 28, 28]] * 3}]
    r = trtptq("build", MNIST_MODEL, "-o", "m2.engine", "--shapes", "input:1x1x28x28/8x1x28x28/32x1x28x28",
               "--no-progress", cwd=tmp_path)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_python_api_gets_the_same_messages():
    from trtptq import CalibrationOptions, TrtptqError

    with pytest.raises(TrtptqError, match=r"^--percentile 0 is outside \(0, 100\]"):
        CalibrationOptions(percentile=0)
    with pytest.raises(TrtptqError, match=r"^--batch-size 0 is not a positive number"):
        CalibrationOptions(batch_size=0)
    with pytest.raises(TrtptqError, match=r"^--method 'kl' is not a choice; use one of minmax, percentile, entropy"):
        CalibrationOptions(method="kl")
    assert CalibrationOptions(num_bins=256, percentile=100).num_bins == 256


def test_planning_reads_the_first_batch_once(tmp_path):
    """Passes are planned from the first batch (one extra read of the data); then every pass reads all of it."""
    counter = tmp_path / "reads"
    (tmp_path / "loader.py").write_text(
        "import pathlib\nimport numpy as np\n\ndef load_data():\n"
        f"    with open({str(counter)!r}, 'a') as f:\n        f.write('x')\n"
        "    yield {'input': np.random.default_rng(0).random((8, 1, 28, 28), np.float32)}\n")
    r = trtptq("calibrate", MNIST_MODEL, "--data", "loader.py", "--batch-size", 4, "--memory-budget", "1", "--method", "minmax",
               "-o", "r.json", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ranges = json.loads((tmp_path / "r.json").read_text())
    assert ranges["num_samples"] == 8
    assert len(counter.read_text()) == 1 + len(ranges["tensors"])  # the plan's first batch, then one read per pass
    assert np.isfinite([t["amax"] for t in ranges["tensors"].values()]).all()


@pytest.mark.parametrize("make, message", [
    (lambda: QuantizeOptions(exclude_nodes="conv1"), r"--exclude-nodes 'conv1' is one string, not a list of names; "
                                                     r"pass \('conv1',\)"),
    (lambda: QuantizeOptions(exclude_op_types="Gemm"), r"--exclude-op-types 'Gemm' is one string"),
    (lambda: BuildOptions(keep_fp32="LayerNormalization"), r"--keep-fp32 'LayerNormalization' is one string"),
    (lambda: BuildOptions(optimization_level=7), r"--optimization-level 7 is outside 0-5"),
    (lambda: BuildOptions(workspace=0), r"--workspace 0 is not a positive number"),
    (lambda: Target(metrics={"accuracy": 98}), r"--target accuracy=98 is outside \[0, 1\]; .* is --target accuracy=0.98"),
    (lambda: Target(metrics={"cosine": 1.01}), r"--target cosine=1.01 is outside \[-1, 1\]"),
    (lambda: Target(metrics={"psnr": 30}), r"--target psnr=30 names no metric; use one of cosine, snr_db"),
    (lambda: CompareOptions(fail_below={"snr_db": float("nan")}), r"--fail-below snr_db=nan is not a finite number"),
    (lambda: CompareOptions(rtol=float("inf")), r"--rtol inf is not a tolerance"),
    (lambda: TritonOptions(name="m", max_queue_delay_us=-5), r"--max-queue-delay-us -5 is negative"),
])
def test_python_options_are_checked_where_they_are_made(make, message):
    """The Python API gets the CLI's one-line messages: a bare string would be read letter by letter."""
    with pytest.raises(TrtptqError, match=message):
        make()
    assert QuantizeOptions(exclude_nodes=("conv1",)).exclude_nodes == ("conv1",)
