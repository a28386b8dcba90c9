"""Cross-attention decoders (`decoder1..4`): query tokens attend to exemplar tokens."""

from __future__ import annotations

from torch import Tensor, nn

from fineparser.config import FineParserConfig


class CrossAttention(nn.Module):
    """Multi-head attention whose keys and values both come from the exemplar tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_map = nn.Linear(dim, dim, bias=False)
        self.k_map = nn.Linear(dim, dim, bias=False)
        self.v_map = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: Tensor, exemplar: Tensor) -> Tensor:
        b, n, c = query.shape
        m = exemplar.shape[1]
        q = self.q_map(query).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        k = self.k_map(exemplar).reshape(b, m, self.heads, c // self.heads).transpose(1, 2)
        v = self.v_map(exemplar).reshape(b, m, self.heads, c // self.heads).transpose(1, 2)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Two-layer GELU MLP of the decoder block."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DecoderBlock(nn.Module):
    """Pre-norm cross-attention block: LN on query and exemplar, residual attention, residual MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_v = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, query: Tensor, exemplar: Tensor) -> Tensor:
        query = query + self.attn(self.norm_q(query), self.norm_v(exemplar))
        return query + self.mlp(self.norm2(query))


class Decoder(nn.Module):
    """A stack of decoder blocks (3 in the paper) sharing the same exemplar tokens."""

    def __init__(self, config: FineParserConfig) -> None:
        super().__init__()
        self.model = nn.ModuleList(
            DecoderBlock(config.token_dim, config.decoder_heads, config.decoder_mlp_ratio)
            for _ in range(config.decoder_depth))

    def forward(self, query: Tensor, exemplar: Tensor) -> Tensor:
        for block in self.model:
            query = block(query, exemplar)
        return query
