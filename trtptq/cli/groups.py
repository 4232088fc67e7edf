"""Argument groups, after Polygraphy's `BaseArgs`: each group declares its options once (`add_to_parser`) and
builds the library's options dataclass from the parsed namespace (`parse`), whose `__post_init__` checks every
value, so the CLI and the Python API stop on the same one-line message before any work starts."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterable

from trtptq.calibrators import METHODS
from trtptq.core.errors import TrtptqError
from trtptq.core.options import DEFAULT_MEMORY_BUDGET
from trtptq.core.trt import BACKENDS, RUNNERS

Command = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse's own errors (a missing option, a value of the wrong type) as the one line every other error is;
    the commands' parsers are made of this class too."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]  # "quantize", "export triton"; "" for the top-level parser
        self.exit(2, f"trtptq: error: {command + ': ' if command else ''}{message}; see `{self.prog} --help`.\n")


def size(text: str) -> int:
    """'512M', '2G', '1024' -> bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 2G)")
    return int(float(m.group(1)) * 1024 ** " KMG".index(m.group(2).upper() or " "))


def _hw(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 224 or 224x224)")
    return int(m.group(1)), int(m.group(2) or m.group(1))


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r} (e.g. 0.485,0.456,0.406)") from None


def _pair(flag: str, item: str) -> tuple[str, str]:
    """'Conv=int8' -> ('Conv', 'int8'): a value without '=' is one line naming the option."""
    key, sep, value = item.rpartition("=")
    if not sep:
        raise TrtptqError(f"{flag} {item!r} is not PATTERN=PRECISION; give e.g. {flag} Conv=int8 '*attn*=fp16'.")
    return key, value


def check_inputs(*items: tuple[str, str | os.PathLike | Iterable[str | os.PathLike] | None]) -> None:
    """Every file the command reads exists, each named with its option, before any model or data is loaded
    (after the --plugin files, whose own errors name them). `--data` may be `script.py:function`."""
    from trtptq.data.sources import source_path

    for flag, value in items:
        paths = [] if value is None else [value] if isinstance(value, (str, os.PathLike)) else value
        for path in paths:
            if not source_path(path)[0].exists():
                raise TrtptqError(f"{flag} {path} does not exist; check the path.")


def check_outputs(*paths: str | os.PathLike | None) -> None:
    """Every output the command will write can be written: checked before any work, not after an hour of it."""
    from trtptq.core.fileio import check_writable

    for path in paths:
        if path:
            check_writable(path)


class BaseArgs:
    """One argument group: `add_to_parser` declares its options, `parse` builds what the library takes from them."""

    title: str | None = None  # the --help section; None: among the command's own options

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        self.add_arguments(parser.add_argument_group(self.title) if self.title else parser)

    def add_arguments(self, group) -> None:
        raise NotImplementedError

    def parse(self, args: argparse.Namespace):
        raise NotImplementedError


class ProgressArgs(BaseArgs):
    """`--no-progress`, which every command takes (export accepts it and shows none)."""

    def add_arguments(self, group) -> None:
        group.add_argument("--no-progress", action="store_true", help="no progress bar")

    def parse(self, args: argparse.Namespace) -> bool:
        return not args.no_progress


PROGRESS = ProgressArgs()


def add_command(subparsers, name: str, help: str, run: Command) -> argparse.ArgumentParser:
    """A command's parser, with the options every command takes; `run(args)` is what it does."""
    parser = subparsers.add_parser(name, help=help, description=help)
    PROGRESS.add_to_parser(parser)
    parser.set_defaults(run=run)
    return parser


class PluginArgs(BaseArgs):
    def add_arguments(self, group) -> None:
        group.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                           help="a Python file whose PLUGINS list describes plugin ops (numpy reference or ONNX Runtime "
                                "library, Q/DQ and FP16 rules, TensorRT library); repeatable. EfficientNMS_TRT is built in")

    def parse(self, args: argparse.Namespace):
        """The built-in plugin ops plus those of every --plugin file, loaded before any model or data."""
        from trtptq.core.userfiles import load_plugins

        return load_plugins(args.plugin)


PLUGIN = PluginArgs()


class BackendArgs(BaseArgs):
    def add_arguments(self, group) -> None:
        group.add_argument("--backend", choices=BACKENDS,
                           help="default: tensorrt if installed, else tensorrt_rtx (or $TRTPTQ_BACKEND)")

    def parse(self, args: argparse.Namespace) -> str | None:
        return args.backend


BACKEND = BackendArgs()


class ImageArgs(BaseArgs):
    title = "image folders"

    def add_arguments(self, group) -> None:
        group.add_argument("--input-name", help="model input the images feed (default: the only input)")
        group.add_argument("--resize", type=int, help="resize the shorter side to this before the center crop")
        group.add_argument("--crop", type=_hw, help="center crop HxW (default: the model's input size)")
        group.add_argument("--mean", type=_floats, default=(0.0,),
                           help="per-channel mean after scaling, e.g. 0.485,0.456,0.406")
        group.add_argument("--std", type=_floats, default=(1.0,), help="per-channel std, e.g. 0.229,0.224,0.225")
        group.add_argument("--pixel-scale", type=float, default=1 / 255, help="pixels are multiplied by this first (1/255)")
        group.add_argument("--channel-order", choices=("RGB", "BGR"), default="RGB")
        group.add_argument("--layout", choices=("NCHW", "NHWC"), help="default: guessed from the input shape")
        group.add_argument("--image-dtype", help="default: the input's dtype")

    def parse(self, args: argparse.Namespace):
        from trtptq.data import ImageOptions

        return ImageOptions(resize=args.resize, crop=args.crop, mean=args.mean, std=args.std, scale=args.pixel_scale,
                            channel_order=args.channel_order, layout=args.layout, dtype=args.image_dtype,
                            input_name=args.input_name)


IMAGE = ImageArgs()


class CalibrationArgs(BaseArgs):
    """--data and how ranges are chosen from it (with the image folder options); needs --backend on the parser."""

    title = "calibration data"

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        super().add_to_parser(parser)
        IMAGE.add_to_parser(parser)

    def add_arguments(self, group) -> None:
        group.add_argument("--data", help=".npz (keys = input names, axis 0 = samples), a folder of .npz/.npy files or "
                                          "images, or a .py file defining load_data() (or file.py:function)")
        group.add_argument("--batch-size", type=int, help="samples per batch (default 1, or the model's fixed batch)")
        group.add_argument("--num-samples", type=int, help="use at most this many samples")
        group.add_argument("--method", choices=(*METHODS, "auto"),
                           help="range method (default: auto: collect once, try each method's ranges and their "
                                "per-tensor mix, keep the one whose outputs are closest to FP32; with --precision fp8: "
                                "minmax; with --implicit-int8: entropy, TensorRT's)")
        group.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default 99.99)")
        group.add_argument("--num-bins", type=int, default=2048, help="histogram bins, a power of two (default 2048)")
        group.add_argument("--memory-budget", type=size, default=DEFAULT_MEMORY_BUDGET,
                           help="activation memory per pass; more tensors take more passes "
                                f"(default {DEFAULT_MEMORY_BUDGET / 2**30:g}G)")
        group.add_argument("--nonfinite", choices=("error", "ignore"), default="error",
                           help="NaN/Inf in an activation: stop (default) or calibrate on the finite values")
        group.add_argument("--runner", choices=RUNNERS, default="onnxruntime",
                           help="what runs the FP32 model: ONNX Runtime (default), or a TensorRT engine on the GPU "
                                "(needs pycuda and a GPU that --backend's engines run on)")
        group.add_argument("--workers", type=int, metavar="N",
                           help="calibrate on N shards of the data at once, as Ray tasks (a local Ray cluster for the "
                                "run, or --ray-address's), and spread sensitivity's and --target's per-layer models "
                                "over N workers; results identical to one process. Needs trtptq[cluster]")
        group.add_argument("--ray-address", metavar="ADDR",
                           help="an existing Ray cluster (auto after `ray start`, ray://head:10001, KubeRay's head "
                                "service); --data must be readable at the same path on its nodes")

    def parse(self, args: argparse.Namespace, default_method: str | None = None):
        """Without --method: `default_method`, or else the --precision's (minmax for fp8, else auto)."""
        from trtptq.calibration.calibrate import CalibrationOptions
        from trtptq.calibration.cluster import Cluster
        from trtptq.quantization.options import range_method

        cluster = Cluster(args.workers, args.ray_address) if args.workers is not None or args.ray_address else None
        method = args.method or default_method or range_method(args.precision)
        return CalibrationOptions(method=method, percentile=args.percentile,
                                  num_bins=args.num_bins, batch_size=args.batch_size, num_samples=args.num_samples,
                                  memory_budget=args.memory_budget, nonfinite=args.nonfinite, image=IMAGE.parse(args),
                                  runner=args.runner, backend=args.backend, cluster=cluster,
                                  show_progress=PROGRESS.parse(args))


class StateArgs(BaseArgs):
    """`--save-state` and `--shard`: calibrate part of the data and keep what the calibrators hold, for `trtptq merge`."""

    title = "sharded calibration"

    def add_arguments(self, group) -> None:
        group.add_argument("--save-state", metavar="FILE",
                           help="also write the calibration state (histograms, extremes, counts; npz + JSON), which "
                                "`trtptq merge` combines with other shards' into ranges")
        group.add_argument("--shard", metavar="K/N",
                           help="calibrate on shard K of N only (samples i with i %% N == K, K from 0); writes only "
                                "--save-state, no ranges")

    def parse(self, args: argparse.Namespace):
        """(the Shard, the state file); a shard without a state file is refused (its ranges alone are partial)."""
        from trtptq.data import Shard

        shard = Shard.parse(args.shard) if args.shard else Shard()
        if shard.count > 1 and not args.save_state:
            raise TrtptqError(f"--shard {shard} needs --save-state FILE: one shard's ranges are partial; merge the "
                              "shards' states with `trtptq merge part-*.state -o ranges.json`.")
        return shard, args.save_state


class MergeArgs(BaseArgs):
    """Which ranges `trtptq merge` reads from merged states; method auto scores them on --model and --data."""

    title = "ranges"

    def add_arguments(self, group) -> None:
        group.add_argument("--method", choices=(*METHODS, "auto"),
                           help="range method (default: the states'); histogram states (auto, entropy, percentile, "
                                "mse) give every method, minmax states minmax; auto needs --model and --data")
        group.add_argument("--percentile", type=float, help="for --method percentile (default: the states')")
        group.add_argument("--model", help="with --method auto: the FP32 model the states were calibrated on")
        group.add_argument("--data", help="with --method auto: all the calibration data (its first samples score "
                                          "the candidates, as one `trtptq calibrate` would)")

    def parse(self, args: argparse.Namespace) -> tuple[str | None, float | None]:
        if args.percentile is not None and not 0 < args.percentile <= 100:
            raise TrtptqError(f"--percentile {args.percentile} is outside (0, 100]; give the share of |x| to keep "
                              "unclipped, e.g. --percentile 99.99.")
        return args.method, args.percentile


class QuantizeArgs(BaseArgs):
    """Q/DQ placement and format; `targets`: also --compute-capability (build has its own, which this group reads)."""

    title = "Q/DQ placement"

    def __init__(self, targets: bool = True) -> None:
        self.targets = targets

    def add_arguments(self, group) -> None:
        from trtptq.quantization.options import BLOCK_SIZES, INT4_METHODS, PRECISIONS

        group.add_argument("--precision", choices=list(PRECISIONS), default="int8",
                           help="int8; fp8 (E4M3, compute capability 8.9+); w4a16 (INT4 weights in blocks, float "
                                "activations: MatMul/Gemm); auto (per layer, from the formats every target runs)")
        group.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=128,
                           help="INT4 weights: values per scale along the reduction axis")
        group.add_argument("--int4-method", choices=INT4_METHODS, default="awq",
                           help="INT4 blocks: awq (scales of least output error on the calibration data, GPTQ's "
                                "rounding inside each block; the default), rtn (least weight error, no data needed) "
                                "or gptq (awq's scales, GPTQ's rounding across blocks: K x K statistics; slower)")
        group.add_argument("--padding-mask", default="auto", metavar="INPUT|auto|none",
                           help="INT4 awq/gptq: the model input that is zero at padded positions, whose rows the "
                                "statistics leave out; auto (default): an integer input named *mask* "
                                "(attention_mask) if the model has one; none: every row")
        group.add_argument("--embeddings", action="store_true",
                           help="quantize Gather embedding tables too: INT8 per row, or with w4a16 INT4 in blocks "
                                "along the hidden axis")
        if self.targets:
            group.add_argument("--compute-capability", nargs="+", default=[], metavar="CC",
                               help="the GPUs the engine will run on, e.g. 8.6 8.9: a format one of them cannot run "
                                    "is refused, and auto never picks it")
        group.add_argument("--layer-precision", nargs="+", action="extend", default=[], metavar="PATTERN=PRECISION",
                           help="nodes of an op type or name glob in int8, fp8, w4a16, fp16 (float; FP16 in a --fp16 "
                                "build) or fp32 (FP32 even there), e.g. Conv=int8 Gather=w4a16 '*attn*=fp16'; the "
                                "last match wins, and auto and --target leave these nodes as given; repeatable")
        group.add_argument("--metric", default="snr", metavar="snr|argmax[:AXIS]|FILE.py:FN",
                           help="what --method/--precision auto and --target score candidates by, higher is better: "
                                "snr (output SNR vs FP32, default), argmax[:AXIS] (argmax agreement with FP32 along "
                                "the class axis, default the last), or FN(fp32_outputs, outputs, labels) -> number "
                                "from a Python file (dicts of whole-set arrays; labels None without them); with "
                                "--target, metric=MIN sets its minimum")
        group.add_argument("--exclude-nodes", nargs="+", default=[], metavar="NAME", help="node names or globs kept in float")
        group.add_argument("--exclude-op-types", nargs="+", default=[], metavar="OP", help="op types kept in float")
        group.add_argument("--keep-first", action="store_true", help="keep the first Conv/Gemm/MatMul in float")
        group.add_argument("--keep-last", action="store_true", help="keep the last Conv/Gemm/MatMul in float")
        group.add_argument("--per-tensor-weights", action="store_true", help="one scale per weight instead of per channel")
        group.add_argument("--no-residual-add", action="store_true", help="do not quantize residual Add inputs")
        group.add_argument("--no-pooling", action="store_true", help="do not quantize average pooling inputs")
        group.add_argument("--no-activation-matmul", action="store_true",
                           help="keep activation x activation MatMuls (attention) in float")

    def parse(self, args: argparse.Namespace):
        from trtptq.quantization.options import QuantizeOptions

        return QuantizeOptions(exclude_nodes=tuple(args.exclude_nodes), exclude_op_types=tuple(args.exclude_op_types),
                               keep_first=args.keep_first, keep_last=args.keep_last,
                               per_channel=not args.per_tensor_weights, residual_add=not args.no_residual_add,
                               pooling=not args.no_pooling, activation_matmul=not args.no_activation_matmul,
                               precision=args.precision, block_size=args.block_size,
                               int4_method=args.int4_method, padding_mask=args.padding_mask,
                               embeddings=args.embeddings,
                               compute_capabilities=tuple(args.compute_capability),
                               layer_precisions=tuple(_pair("--layer-precision", item) for item in args.layer_precision),
                               metric=args.metric)


class RangesArgs(BaseArgs):
    """`--ranges`: a ranges file from `trtptq calibrate`, read and checked before any model or data is loaded."""

    def __init__(self, help: str) -> None:
        self.help = help

    def add_arguments(self, group) -> None:
        group.add_argument("--ranges", help=self.help)

    def parse(self, args: argparse.Namespace):
        from trtptq.calibration.ranges import Ranges

        return Ranges.load(args.ranges) if args.ranges else None


class CacheArgs(BaseArgs):
    """Where a TensorRT calibration cache of the ranges goes, and the TensorRT version its header names."""

    def add_arguments(self, group) -> None:
        group.add_argument("--calibration-cache", help="also write a TensorRT calibration cache (TensorRT <= 10)")
        group.add_argument("--cache-for", metavar="VERSION",
                           help="TensorRT version the cache header names, e.g. 10.13.0 (default: the installed "
                                "TensorRT <= 10, else 10.0.0)")

    def parse(self, args: argparse.Namespace) -> tuple[str | None, int | None]:
        """(cache path, header version; None: the installed TensorRT's)."""
        from trtptq.core.trt import cache_version

        return args.calibration_cache, cache_version(args.cache_for) if args.cache_for else None


class EvaluationArgs(BaseArgs):
    """Where sensitivity and `--target` measure; needs CalibrationArgs on the parser (image options, memory budget).
    `target`: also `--target`, and `parse` gives a Target when it is set."""

    def __init__(self, eval_help: str, target: bool = False) -> None:
        self.eval_help, self.target = eval_help, target

    def add_arguments(self, group) -> None:
        from trtptq.autotune.sensitivity import DEFAULT_SAMPLES

        group.add_argument("--eval-data", help=self.eval_help)
        if self.target:
            group.add_argument("--target", nargs="+", default=[], metavar="METRIC=MIN",
                               help="accuracy budget on --eval-data, as compare --fail-below takes it (cosine, snr_db, "
                                    "top1_agreement, top5_agreement, accuracy; agreement and accuracy as fractions, "
                                    "e.g. accuracy=0.98; metric: --metric's score): the most sensitive layers walk up "
                                    "the precision ladder (INT4, INT8, FP8, FP16, FP32, as the formats allow) until "
                                    "every target holds; exit 1 if even all-float misses it")
        group.add_argument("--sensitivity-samples", type=int, default=DEFAULT_SAMPLES,
                           help=f"evaluation samples each single-layer variant runs on (default {DEFAULT_SAMPLES})")

    def parse(self, args: argparse.Namespace):
        """EvaluationOptions, or with --target a Target: built (and so checked) even where the command may not measure."""
        from trtptq.autotune.fallback import METRIC_TARGET
        from trtptq.autotune.sensitivity import SensitivityOptions
        from trtptq.evaluation.compare import parse_thresholds
        from trtptq.pipelines import EvaluationOptions, Target

        targets = self.target and args.target
        sensitivity = SensitivityOptions(samples=args.sensitivity_samples, gain=not targets,
                                         show_progress=PROGRESS.parse(args))
        if targets:
            own = [item for item in args.target if item.startswith(f"{METRIC_TARGET}=")]  # --metric's minimum
            metrics = parse_thresholds([item for item in args.target if item not in own], "--target")
            for item in own:
                try:
                    metrics[METRIC_TARGET] = float(item.partition("=")[2])
                except ValueError:
                    raise TrtptqError(f"bad --target {item!r}: not a number") from None
            return Target(data=args.eval_data, image=IMAGE.parse(args), sensitivity=sensitivity, metrics=metrics)
        return EvaluationOptions(data=args.eval_data, image=IMAGE.parse(args), sensitivity=sensitivity)


class BuildArgs(BaseArgs):
    """How the engine is built; needs --backend and --no-progress on the parser."""

    title = "engine"

    def add_arguments(self, group) -> None:
        group.add_argument("--fp16", action="store_true",
                           help="FP16 wherever it is safe (I/O and sensitive ops stay FP32)")
        group.add_argument("--keep-fp32", nargs="+", default=[], metavar="NODE|OP",
                           help="nodes or op types kept FP32 with --fp16")
        group.add_argument("--shapes", action="append", default=[], metavar="NAME:MIN/OPT/MAX,...",
                           help="an optimization profile, e.g. input:1x3x224x224/8x3x224x224/32x3x224x224; "
                                "repeat for more")
        group.add_argument("--workspace", type=size, help="workspace memory limit, e.g. 2G")
        group.add_argument("--optimization-level", type=int, choices=range(6), help="builder optimization level 0-5")
        group.add_argument("--no-tf32", action="store_true",
                           help="FP32 layers in full FP32 precision (TensorRT allows TF32)")
        group.add_argument("--timing-cache", help="timing cache file: read if present, written after the build")
        group.add_argument("--plugins", nargs="+", default=[], metavar="LIB",
                           help="TensorRT plugin libraries to load (a --plugin file's trt_library is loaded too)")
        group.add_argument("--compute-capability", nargs="+", default=[], metavar="CC",
                           help="TensorRT-RTX target GPUs, e.g. 7.5 8.6 8.9 12.0 (default: RTX's portable set)")
        group.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")

    def parse(self, args: argparse.Namespace, implicit_int8=None):
        """BuildOptions; `implicit_int8`: the command's ImplicitInt8, built from the calibration group."""
        from trtptq.core.shapes import parse_shapes
        from trtptq.engine.options import BuildOptions

        return BuildOptions(backend=args.backend, fp16=args.fp16, keep_fp32=tuple(args.keep_fp32),
                            profiles=[parse_shapes(s) for s in args.shapes], workspace=args.workspace,
                            optimization_level=args.optimization_level, tf32=not args.no_tf32,
                            timing_cache=args.timing_cache, plugins=tuple(args.plugins),
                            compute_capabilities=tuple(args.compute_capability), implicit_int8=implicit_int8,
                            show_progress=PROGRESS.parse(args))


class CompareArgs(BaseArgs):
    """How candidates are compared (with the image folder options)."""

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        super().add_to_parser(parser)
        IMAGE.add_to_parser(parser)

    def add_arguments(self, group) -> None:
        group.add_argument("--batch-size", type=int, help="samples per run (default 64, or the model's fixed batch)")
        group.add_argument("--num-samples", type=int, help="use at most this many samples")
        group.add_argument("--fail-below", nargs="+", default=[], metavar="METRIC=MIN",
                           help="e.g. cosine=0.999 snr_db=20 top1_agreement=0.99 accuracy=0.98 (agreement and "
                                "accuracy as fractions)")
        group.add_argument("--atol", type=float, help="Polygraphy elementwise check (with --rtol)")
        group.add_argument("--rtol", type=float)
        group.add_argument("--no-per-layer", action="store_true", help="outputs only (faster)")

    def parse(self, args: argparse.Namespace):
        from trtptq.evaluation.compare import CompareOptions, parse_thresholds

        return CompareOptions(batch_size=args.batch_size, num_samples=args.num_samples, per_layer=not args.no_per_layer,
                              fail_below=parse_thresholds(args.fail_below), atol=args.atol, rtol=args.rtol,
                              image=IMAGE.parse(args), show_progress=PROGRESS.parse(args))


class BenchArgs(BaseArgs):
    """How models are timed, with the --plugin files whose ops ONNX models run and whose libraries engines load."""

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        super().add_to_parser(parser)
        PLUGIN.add_to_parser(parser)

    def add_arguments(self, group) -> None:
        group.add_argument("--shapes", metavar="NAME:SHAPE,...",
                           help="input shapes, e.g. input:8x3x224x224 (default: --batch-size in a dynamic batch "
                                "dimension, the profile's opt shape elsewhere)")
        group.add_argument("--batch-size", type=int, help="fills a dynamic batch dimension (default 1)")
        group.add_argument("--threads", type=int, default=1, help="concurrent callers (default 1)")
        group.add_argument("--instances", type=int, help="engine execution contexts per profile (default: --threads)")
        group.add_argument("--duration", type=float, default=5.0, help="seconds timed per model (default 5)")
        group.add_argument("--warmup", type=float, default=1.0, help="seconds of untimed calls first (default 1)")

    def parse(self, args: argparse.Namespace):
        from trtptq.core.shapes import parse_shapes
        from trtptq.runtime.bench import BenchOptions

        shapes = {n: opt for n, (_, opt, _) in parse_shapes(args.shapes or "").items()}
        return BenchOptions(batch_size=args.batch_size, shapes=shapes, threads=args.threads, duration=args.duration,
                            warmup=args.warmup, instances=args.instances, show_progress=PROGRESS.parse(args),
                            plugins=PLUGIN.parse(args))


class TritonArgs(BaseArgs):
    def add_arguments(self, group) -> None:
        group.add_argument("--name", required=True, help="model name (its folder in the repository)")
        group.add_argument("--max-batch-size", type=int,
                           help="0: no batching; default: the largest batch the profiles cover (engines), "
                                "no batching (ONNX)")
        group.add_argument("--dynamic-batching", action="store_true",
                           help="let Triton batch requests (preferred sizes: the profiles' opt batches)")
        group.add_argument("--max-queue-delay-us", type=int, default=100, help="with --dynamic-batching (default 100)")
        group.add_argument("--instances", type=int, default=1, help="model instances per GPU (default 1)")

    def parse(self, args: argparse.Namespace):
        from trtptq.export.triton import TritonOptions

        return TritonOptions(name=args.name, max_batch_size=args.max_batch_size, dynamic_batching=args.dynamic_batching,
                             max_queue_delay_us=args.max_queue_delay_us, instances=args.instances)
