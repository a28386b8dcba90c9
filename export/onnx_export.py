"""PyTorch -> ONNX: the encoder (uint8 frames in, normalisation inside the graph) and the pair head.

Both graphs come from the TorchScript exporter (``dynamo=False``): the model's encoder and pair
head are static-shape by design (gather + lerp resampling, argmax transitions), and tracing
records that arithmetic as one graph.  Only the pair head's exemplar count K is dynamic.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from export import log_saved
from fineparser import spec
from fineparser.model import FineParser, QueryFeatures
from fineparser.package import (
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    EXEMPLAR_DIM,
    MASK_OUTPUT,
    PAIR_HEAD_INPUTS,
    PAIR_HEAD_OUTPUTS,
)

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
"""LayerNormalization (the decoders) is a single ONNX op from opset 17; TensorRT 10 parses 9..20."""
EXAMPLE_EXEMPLARS = 3
"""K of the tracing example: not 1, so the query's broadcast over K is traced as an Expand."""

STATIC_TOKENS = 12
"""Static tokens per clip: three steps x 4 tokens from the static encoder's towers."""

FRAMES_SHAPE = (1, spec.NUM_FRAMES, spec.FRAME_SIZE, spec.FRAME_SIZE, 3)
"""The encoder's input: one clip of uint8 RGB frames, channels last (as decoders deliver them)."""

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32", onnx.TensorProto.UINT8: "uint8",
                onnx.TensorProto.INT8: "int8", onnx.TensorProto.BOOL: "bool", onnx.TensorProto.BFLOAT16: "bfloat16"}


class EncoderGraph(nn.Module):
    """uint8 frames [1, 96, 112, 112, 3] -> encoder outputs; ImageNet normalisation inside the graph."""

    def __init__(self, model: FineParser, with_masks: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_masks = with_masks
        # (x / 255 - mean) / std == (x - 255 mean) * (1 / (255 std)): the same two ops as preprocess.normalize_clip.
        mean = torch.tensor(spec.IMAGENET_MEAN, dtype=torch.float32) * 255.0
        inv_std = 1.0 / (torch.tensor(spec.IMAGENET_STD, dtype=torch.float32) * 255.0)
        self.register_buffer("mean_255", mean.reshape(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("inv_std_255", inv_std.reshape(1, 3, 1, 1, 1), persistent=False)

    def forward(self, frames: Tensor) -> tuple[Tensor, ...]:
        clip = frames.to(torch.float32).permute(0, 4, 1, 2, 3)
        clip = (clip - self.mean_255) * self.inv_std_255
        features = self.model.encode(clip, with_masks=self.with_masks)
        outputs = (features.window_features, features.transitions, features.transition_probs, features.static_tokens)
        return (*outputs, features.mask_logits) if self.with_masks else outputs


class PairHeadGraph(nn.Module):
    """One query's features x K exemplars' features -> delta [K], step_deltas [K, 3]."""

    def __init__(self, model: FineParser) -> None:
        super().__init__()
        self.model = model

    def forward(self, query_window_features: Tensor, query_transitions: Tensor, query_static_tokens: Tensor,
                exemplar_window_features: Tensor, exemplar_transitions: Tensor,
                exemplar_static_tokens: Tensor) -> tuple[Tensor, Tensor]:
        # The pair head never reads transition probabilities: they are not graph inputs.
        query = QueryFeatures(query_window_features, query_transitions, None, query_static_tokens)
        exemplars = QueryFeatures(exemplar_window_features, exemplar_transitions, None, exemplar_static_tokens)
        out = self.model.pair_head(query, exemplars)
        return out.delta, out.step_deltas


def example_frames(seed: int = 0) -> Tensor:
    """A random uint8 clip [1, 96, 112, 112, 3] (tracing input)."""
    return torch.randint(0, 256, FRAMES_SHAPE, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def describe_onnx(model_or_path: onnx.ModelProto | str | Path) -> dict[str, Any]:
    """Inputs and outputs of an ONNX graph: name, dtype and shape (symbolic dims by name)."""
    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path),
                                                                                        load_external_data=False)

    def tensor(value: onnx.ValueInfoProto) -> dict[str, Any]:
        ttype = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in ttype.shape.dim]
        return {"name": value.name, "dtype": _ONNX_DTYPES.get(ttype.elem_type, str(ttype.elem_type)), "shape": dims}

    initializers = {i.name for i in model.graph.initializer}
    return {"inputs": [tensor(v) for v in model.graph.input if v.name not in initializers],
            "outputs": [tensor(v) for v in model.graph.output],
            "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)}


def _finalise(path: Path, output_shapes: dict[str, list[int | str]], doc: str) -> None:
    """Declare the true output shapes, drop the exporter's intermediate shape guesses, check the model."""
    model = onnx.load(str(path))
    # The tracer records sizes as Shape ops, so its own shape inference names static output dims
    # symbolically ("Reshapewindow_features_dim_0"); a consumer allocating buffers needs the numbers.
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        wanted = output_shapes[output.name]
        del dims[:]
        for value in wanted:
            dim = dims.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value
    del model.graph.value_info[:]
    model.doc_string = doc
    model.producer_name = "fineparser-export"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _torch_export(module: nn.Module, args: tuple[Tensor, ...], path: Path, opset: int, input_names: list[str],
                  output_names: list[str], dynamic_axes: dict[str, dict[int, str]] | None) -> None:
    # The exporter restores the training flag of the module it is given (recursively) after
    # tracing, and traces whatever mode that is: the wrapper must be in eval mode itself.
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        # Expected while tracing: the model's input checks turn shapes into Python bools, and the
        # TorchScript exporter announces its deprecation; neither changes the graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)


def export_encoder(model: FineParser, path: str | Path, opset: int = DEFAULT_OPSET,
                   with_masks: bool = False) -> dict[str, Any]:
    """Write encoder.onnx (or encoder_masks.onnx with `with_masks`); returns its input/output description."""
    path = Path(path)
    start = time.perf_counter()
    log.info("exporting %s (torch %s, onnx %s, opset %d)", path.name, torch.__version__, onnx.__version__, opset)
    graph = EncoderGraph(model, with_masks).eval()
    frames = example_frames()
    with torch.no_grad():
        reference = graph(frames)
    names = [*ENCODER_OUTPUTS, *([MASK_OUTPUT] if with_masks else [])]
    _torch_export(graph, (frames,), path, opset, [ENCODER_INPUT], names, None)
    _finalise(path, {name: list(t.shape) for name, t in zip(names, reference)},
              "FineParser encoder: uint8 RGB frames [1,96,112,112,3] -> window features, transitions, "
              "transition probabilities, static tokens" + (", mask logits" if with_masks else ""))
    log_saved(log, path, time.perf_counter() - start)
    return describe_onnx(path)


def export_pair_head(model: FineParser, path: str | Path, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Write pair_head.onnx with a dynamic exemplar count K; returns its input/output description."""
    path = Path(path)
    start = time.perf_counter()
    log.info("exporting %s (torch %s, onnx %s, opset %d, dynamic %s)", path.name, torch.__version__,
             onnx.__version__, opset, EXEMPLAR_DIM)
    gen = torch.Generator().manual_seed(0)

    def features(count: int) -> tuple[Tensor, Tensor, Tensor]:
        first = torch.randint(0, spec.NUM_FRAMES // 2, (count, 1), generator=gen)
        second = torch.randint(spec.NUM_FRAMES // 2, spec.NUM_FRAMES, (count, 1), generator=gen)
        return (torch.randn(count, spec.NUM_WINDOWS, model.config.feature_dim, generator=gen),
                torch.cat([first, second], 1),
                torch.randn(count, STATIC_TOKENS, model.config.token_dim, generator=gen))

    args = (*features(1), *features(EXAMPLE_EXEMPLARS))
    graph = PairHeadGraph(model).eval()
    dynamic = {name: {0: EXEMPLAR_DIM} for name in (*PAIR_HEAD_INPUTS[3:], *PAIR_HEAD_OUTPUTS)}
    _torch_export(graph, args, path, opset, list(PAIR_HEAD_INPUTS), list(PAIR_HEAD_OUTPUTS), dynamic)
    _finalise(path, {"delta": [EXEMPLAR_DIM], "step_deltas": [EXEMPLAR_DIM, len(spec.STEP_NAMES)]},
              "FineParser pair head: one query's features x K exemplars' features -> delta [K], step_deltas [K,3]")
    log_saved(log, path, time.perf_counter() - start)
    return describe_onnx(path)
