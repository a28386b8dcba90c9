"""PyTorch reference backend: the package's source checkpoint (or --checkpoint), imported lazily."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fineparser.package import ModelPackage

log = logging.getLogger(__name__)


class TorchBackend:
    """FineParser.encode / pair_head on the CPU (or the first CUDA GPU), fp32."""

    name = "torch"

    def __init__(self, package: ModelPackage, checkpoint: str | None = None) -> None:
        from runtime.backends import BackendError

        source = package.manifest.get("source", {}) or {}
        path = Path(checkpoint or source.get("checkpoint") or "")
        if not str(path) or not path.is_file():
            raise BackendError(f"the torch backend needs the package's source checkpoint ({path or 'not recorded'} "
                               "not found): pass --checkpoint CKPT")
        try:
            import torch

            from fineparser.checkpoint import load_model
        except ImportError as exc:
            raise BackendError(f"torch is not importable ({exc})") from None
        if source.get("kind") == "official" and checkpoint is None:
            raise BackendError("the package was exported from an official best.pth: pass --checkpoint with "
                               "one of our checkpoints (fineparser.checkpoint format)")
        self._torch = torch
        self.model, _ = load_model(path)
        self.model.eval()
        self.description = f"torch {torch.__version__} cpu ({path.name})"

    @property
    def has_masks(self) -> bool:
        """The model always has its spatial parser."""
        return True

    def encode(self, frames: np.ndarray, with_masks: bool = False) -> dict[str, np.ndarray]:
        """Normalise like the graph does, then FineParser.encode."""
        from fineparser.preprocess import normalize_clip

        torch = self._torch
        clip = torch.from_numpy(normalize_clip(frames[0]))[None]
        with torch.no_grad():
            features = self.model.encode(clip, with_masks=with_masks)
        out = {"window_features": features.window_features.numpy(), "transitions": features.transitions.numpy(),
               "transition_probs": features.transition_probs.numpy(), "static_tokens": features.static_tokens.numpy()}
        if features.mask_logits is not None:
            out["mask_logits"] = features.mask_logits.numpy()
        return out

    def pair_head(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """delta [K], step_deltas [K, 3] from FineParser.pair_head."""
        from fineparser.model import QueryFeatures

        torch = self._torch
        query = QueryFeatures(torch.from_numpy(feeds["query_window_features"]),
                              torch.from_numpy(feeds["query_transitions"]), None,
                              torch.from_numpy(feeds["query_static_tokens"]))
        exemplars = QueryFeatures(torch.from_numpy(feeds["exemplar_window_features"]),
                                  torch.from_numpy(feeds["exemplar_transitions"]), None,
                                  torch.from_numpy(feeds["exemplar_static_tokens"]))
        with torch.no_grad():
            out = self.model.pair_head(query, exemplars)
        return out.delta.numpy(), out.step_deltas.numpy()

    def close(self) -> None:
        """Drop the model."""
        self.model = None
