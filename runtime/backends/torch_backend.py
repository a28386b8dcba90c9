"""PyTorch backend: the package's source checkpoint (or --checkpoint), imported lazily; the GPU reference path.

On the CPU it runs fp32, the reference every other backend is compared with.  On CUDA
(``--device cuda``) it adds what makes PyTorch fast there:

- bf16 or fp16 autocast (``--precision bf16|fp16``; ``auto`` picks fp16 where the package's fp16
  variant met its goals, fp32 otherwise: bf16 is never picked unmeasured);
- channels-last memory (NDHWC for the I3D trunks' Conv3d, NHWC for the ResNet's Conv2d) under
  autocast, where tensor-core convolutions want it (``bench/gpu_check.sh`` measures the gain);
- the static-shape encoder replayed from a CUDA graph captured on its first call, checked once
  against the eager result (any difference, or a capture that fails, falls back to eager, logged);
- uint8 frames copied from pinned memory and normalised on the GPU (the graph's arithmetic).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fineparser.package import ModelPackage
from fineparser.precision import AUTO, resolve_precision

log = logging.getLogger(__name__)

AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}
GRAPH_CHECK_ATOL = 1e-3
"""Largest |graph - eager| on the encoder's float outputs accepted when a CUDA graph is first captured."""


def _channels_last(model: Any, torch: Any) -> None:
    """Conv3d/ConvTranspose3d weights to NDHWC, Conv2d weights to NHWC (in place)."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            module.to(memory_format=torch.channels_last_3d)
        elif isinstance(module, torch.nn.Conv2d):
            module.to(memory_format=torch.channels_last)


class TorchBackend:
    """FineParser.encode / pair_head: fp32 on the CPU (the reference), fp32/bf16/fp16 on CUDA."""

    name = "torch"

    def __init__(self, package: ModelPackage | None, checkpoint: str | None = None, *, precision: str = AUTO,
                 device: str = "auto", cuda_graph: bool | None = None, channels_last: bool | None = None,
                 model: Any = None) -> None:
        """package: source of the checkpoint and of the precision recommendation (None with `model`).

        cuda_graph / channels_last: None = on for CUDA (channels-last under autocast only), off on the CPU.
        model: an already built FineParser (bench/gpu_check.py); the checkpoint is not read then.
        """
        from fineparser.precision import PrecisionError
        from runtime.backends import BackendError, parse_device

        kind, index = parse_device(device)
        try:
            import torch
        except ImportError as exc:
            raise BackendError(f"torch is not importable ({exc})") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"--device {device}: torch {torch.__version__} sees no CUDA GPU")
        on_gpu = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
        self._torch = torch
        self.device = torch.device(f"cuda:{index}" if on_gpu else "cpu")
        manifest = package.manifest if package is not None else {}
        try:
            choice = resolve_precision(precision, manifest, backend="torch", on_gpu=on_gpu,
                                       runnable=("fp32", "fp16") if on_gpu else ("fp32",))
        except PrecisionError as exc:
            raise BackendError(str(exc)) from None
        if choice.precision == "int8":
            raise BackendError("--precision int8 runs on the onnxruntime backend (the package's int8 variant) or the "
                               "tensorrt backend (its int8 engines); the torch backend runs fp32, or bf16/fp16 "
                               "autocast with --device cuda")
        if choice.precision in AUTOCAST and not on_gpu:
            raise BackendError(f"--precision {choice.precision} on the torch backend is autocast and needs --device "
                               "cuda; on the CPU the package's fp16/int8 variants run on the onnxruntime backend")
        self.precision, self.precision_reason = choice.precision, choice.reason
        self._autocast = getattr(torch, AUTOCAST[self.precision]) if self.precision in AUTOCAST else None

        name = "model"
        if model is None:
            model, name = self._load(package, checkpoint, torch)
        self.model = model.eval().to(self.device)
        self.channels_last = on_gpu and (self._autocast is not None if channels_last is None else channels_last)
        if self.channels_last:
            _channels_last(self.model, torch)
        self.cuda_graph = on_gpu and (True if cuda_graph is None else cuda_graph)
        self._graph: Any = None
        self._static: tuple[Any, Any] | None = None
        if on_gpu:
            from fineparser import spec

            self._mean_255 = (torch.tensor(spec.IMAGENET_MEAN, dtype=torch.float32) * 255.0).to(self.device)
            self._inv_std_255 = (1.0 / (torch.tensor(spec.IMAGENET_STD, dtype=torch.float32) * 255.0)).to(self.device)
        extras = [x for x, on in (("channels-last", self.channels_last), ("cuda-graph", self.cuda_graph)) if on]
        self.description = (f"torch {torch.__version__} {self.device} {self.precision}"
                            + (f" {'+'.join(extras)}" if extras else "") + f" ({name})")

    @staticmethod
    def _load(package: ModelPackage | None, checkpoint: str | None, torch: Any) -> tuple[Any, str]:
        from runtime.backends import BackendError

        source = (package.manifest.get("source", {}) if package is not None else {}) or {}
        path = Path(checkpoint or source.get("checkpoint") or "")
        if not str(path) or not path.is_file():
            raise BackendError(f"the torch backend needs the package's source checkpoint ({path or 'not recorded'} "
                               "not found): pass --checkpoint CKPT")
        if source.get("kind") == "official" and checkpoint is None:
            raise BackendError("the package was exported from an official best.pth: pass --checkpoint with "
                               "one of our checkpoints (fineparser.checkpoint format)")
        from fineparser.checkpoint import load_model

        model, _ = load_model(path)
        return model, path.name

    @property
    def has_masks(self) -> bool:
        """The model always has its spatial parser."""
        return True

    # ------------------------------------------------------------------ helpers

    def _to_device(self, array: np.ndarray) -> Any:
        tensor = self._torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def _clip(self, frames: np.ndarray) -> Any:
        """uint8 [1, 96, 112, 112, 3] -> normalised float [1, 3, 96, 112, 112] on the device."""
        torch = self._torch
        if self.device.type != "cuda":
            from fineparser.preprocess import normalize_clip

            return torch.from_numpy(normalize_clip(frames[0]))[None]
        raw = self._to_device(frames).permute(0, 4, 1, 2, 3).float()
        clip = (raw - self._mean_255.view(1, 3, 1, 1, 1)) * self._inv_std_255.view(1, 3, 1, 1, 1)
        return clip.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else clip.contiguous()

    def _autocast_context(self) -> Any:
        torch = self._torch
        if self._autocast is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self._autocast)

    def _encode(self, clip: Any, with_masks: bool) -> tuple[Any, ...]:
        with self._autocast_context():
            features = self.model.encode(clip, with_masks=with_masks)
        return (features.window_features, features.transitions, features.transition_probs, features.static_tokens,
                features.mask_logits)

    def _encode_graphed(self, clip: Any) -> tuple[Any, ...]:
        """The encoder from a CUDA graph (captured on the first call and checked against eager once)."""
        torch = self._torch
        if self._graph is None:
            static_in = clip.clone()
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):  # warm-up off the default stream, as torch's docs capture
                for _ in range(2):
                    eager = self._encode(static_in, False)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._encode(static_in, False)
            graph.replay()
            torch.cuda.synchronize(self.device)
            same = torch.equal(static_out[1], eager[1]) and all(
                float((a.float() - b.float()).abs().max()) <= GRAPH_CHECK_ATOL
                for a, b in zip((static_out[0], static_out[2], static_out[3]), (eager[0], eager[2], eager[3])))
            if not same:
                raise RuntimeError("the graph's outputs differ from eager execution")
            self._graph, self._static = graph, (static_in, static_out)
        static_in, static_out = self._static
        static_in.copy_(clip)
        self._graph.replay()
        return static_out

    # ------------------------------------------------------------------ Backend

    def encode(self, frames: np.ndarray, with_masks: bool = False) -> dict[str, np.ndarray]:
        """Normalise like the graph does, then FineParser.encode (CUDA graph when it runs)."""
        torch = self._torch
        with torch.no_grad():
            clip = self._clip(frames)
            outputs = None
            if self.cuda_graph and not with_masks:
                try:
                    outputs = self._encode_graphed(clip)
                except Exception as exc:  # capture refused (an op that syncs, a driver limit): eager still works
                    log.warning("torch encoder: CUDA graph unusable (%s): running eager", " ".join(str(exc).split()))
                    self.cuda_graph, self._graph, self._static = False, None, None
            if outputs is None:
                outputs = self._encode(clip, with_masks)
            window, transitions, probs, tokens, masks = outputs
            out = {"window_features": window.float().cpu().numpy(),
                   "transitions": transitions.to(torch.int64).cpu().numpy(),
                   "transition_probs": probs.float().cpu().numpy(), "static_tokens": tokens.float().cpu().numpy()}
            if with_masks and masks is not None:
                out["mask_logits"] = masks.float().cpu().numpy()
        return out

    def pair_head(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """delta [K], step_deltas [K, 3] from FineParser.pair_head."""
        from fineparser.model import QueryFeatures

        torch = self._torch
        tensors = {name: self._to_device(value) for name, value in feeds.items()}
        query = QueryFeatures(tensors["query_window_features"], tensors["query_transitions"], None,
                              tensors["query_static_tokens"])
        exemplars = QueryFeatures(tensors["exemplar_window_features"], tensors["exemplar_transitions"], None,
                                  tensors["exemplar_static_tokens"])
        with torch.no_grad(), self._autocast_context():
            out = self.model.pair_head(query, exemplars)
        return out.delta.float().cpu().numpy(), out.step_deltas.float().cpu().numpy()

    def close(self) -> None:
        """Drop the model and any captured graph."""
        self._graph = self._static = None
        self.model = None
