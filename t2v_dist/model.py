"""The text-to-video transformer of arXiv 2309.14683, in one file (see docs/design.md, "The model").

Caption tokens x_1..x_n and frames y_1..y_m share one GPT-2 sequence [wte(x_1..x_n), h_1..h_{m-1}]:
  noise      ybar_i = (1 - beta_i) * y_i + beta_i * eps,   beta_i = min(noise_max, noise_slope * i), i from 0
             (default slope 2 * 0.9 / 1023: the authors' 2 * linspace(0, 0.9, 1024)[i]; independent of max_frames)
  encoder    h_i    = Linear(flatten(UNet.down(ybar_i, beta_i)))   one token per frame
  decoder    yhat_1 = tanh(Linear(z at x_n)),  yhat_{i+1} = tanh(Linear(z at h_i))
  U-Net      ytilde_i = UNet.up(UNet.down(ybar_i))               reconstruction of the clean frame
  LM head    tied to wte, run on text positions only
  loss       per sample, then averaged over samples (weights and options from `loss_preset`, see LOSS_PRESETS):
               w_text CE
             + s * (w_frame mean_f w_f |yhat_f - y_f|^2 + w_diff mean_{f>1} |(yhat_f - yhat_{f-1}) - (y_f - y_{f-1})|)
             + w_first |yhat_1 - y_1|_1 + w_recon |ytilde - y|_{1 or 2} + w_motion L_motion
             s = m (frame_scale="frames", the authors') or 1 ("mean"); w_f = 1 + |y_f - y_{f-1}| if motion_weighted;
             L_motion = -mean over K random pairs (i, j) of min(mean (yhat_i - yhat_j)^2, tau)

The reconstruction covers the frames that are encoded as tokens (y_1..y_{m-1}). Samples arrive packed
(`packing.PackedBatch`); the frame, diff, first and motion terms come from the fused op in `ops/`.
Generation draws each caption's noise from (seed, its sample id), so a video does not depend on its batch.

Where loss_preset="paper" still differs from the authors' code (VideoUnetGPT.forward), and why:
  - their L_img covers frames 2..m and their L_img2 the differences from frame 2 on; here the frame term
    also covers frame 1 (weight 1, it has no predecessor) and the diff term also y_2 - y_1: one per-frame
    rule for the fused kernel, and frame 1 is the one the text must determine;
  - their means run over the whole batch of equal-length clips; here every term is a per-sample mean
    (clips of any length pack together), then averaged over samples;
  - their noise 2 * linspace(0, 0.9, 1024)[i] exceeds 1 after frame 568; here beta is capped at noise_max.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ops import motion_frame_loss, sample_motion_pairs
from t2v_dist.attention import PackedLayout, masked_attention
from t2v_dist.packing import PackedBatch, sample_seed


# --------------------------------------------------------------------------------------- config

@dataclass
class ModelConfig:
    preset: str = "tiny"
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 64
    vocab_size: int = 50257
    n_positions: int = 256           # per sample: caption tokens + frames - 1
    dropout: float = 0.0
    image_size: int = 32             # H = W
    unet_base: int = 8               # channels at full resolution
    unet_mults: tuple[int, ...] = (1, 2, 4, 8)  # one level per entry; each level but the last halves H
    unet_groups: int = 8             # GroupNorm groups
    max_frames: int = 64             # most frames per clip
    max_caption_tokens: int = 32     # <|endoftext|> included
    noise_slope: float = 2 * 0.9 / 1023  # beta_i = min(noise_max, noise_slope * i): the authors' 2 * linspace(0, 0.9, 1024)
    noise_max: float = 0.9
    # Loss: `loss_preset` (LOSS_PRESETS) fills every loss field left None; a field given explicitly wins.
    loss_preset: str = "default"
    w_text: float | None = None
    w_frame: float | None = None
    w_diff: float | None = None      # L1 of predicted vs true frame-to-frame differences (the authors' L_img2)
    w_first: float | None = None     # L1 on the first frame, predicted from the text (the authors' L_t2i)
    w_recon: float | None = None
    w_motion: float | None = None
    frame_scale: str | None = None   # "frames": frame and diff terms times the clip's frame count T; "mean": not
    motion_weighted: bool | None = None  # weight the frame loss by 1 + |y_t - y_{t-1}|
    recon_loss: str | None = None    # "l1" | "mse" for the U-Net reconstruction
    motion_pairs: int = 4            # K random pairs per sample
    motion_tau: float = 0.1          # cap of each pair's mean squared difference
    attn_backend: str = "auto"       # auto | sdpa | xformers
    loss_backend: str = "auto"       # auto | triton | reference

    def __post_init__(self):
        self.unet_mults = tuple(self.unet_mults)
        self._resolve_loss()
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        scale = 2 ** (len(self.unet_mults) - 1)
        if self.image_size % scale or self.image_size < scale:
            raise ValueError(f"image_size={self.image_size} must be a multiple of {scale} for unet_mults={self.unet_mults}")
        for m in self.unet_mults:
            if (self.unet_base * m) % self.unet_groups:
                raise ValueError(f"unet_base*mult={self.unet_base * m} must be divisible by unet_groups={self.unet_groups}")
        if self.max_caption_tokens + 1 > self.n_positions:
            raise ValueError(f"max_caption_tokens={self.max_caption_tokens} leaves no room for frames in n_positions={self.n_positions}")
        if not (math.isfinite(self.noise_slope) and self.noise_slope >= 0.0):
            raise ValueError(f"noise_slope must be a finite number >= 0, got {self.noise_slope}")
        if not 0.0 <= self.noise_max < 1.0:
            raise ValueError(f"noise_max must be in [0, 1) (1 would make a frame pure noise), got {self.noise_max}")

    def _resolve_loss(self) -> None:
        if self.loss_preset not in LOSS_PRESETS:
            raise ValueError(f"unknown loss_preset {self.loss_preset!r}; choose from {sorted(LOSS_PRESETS)}")
        for name, value in LOSS_PRESETS[self.loss_preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("w_text", "w_frame", "w_diff", "w_first", "w_recon", "w_motion"):
            w = getattr(self, name)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
        if self.frame_scale not in FRAME_SCALES:
            raise ValueError(f"frame_scale must be one of {FRAME_SCALES}, got {self.frame_scale!r}")
        if self.recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss must be one of {RECON_LOSSES}, got {self.recon_loss!r}")
        if not isinstance(self.motion_weighted, bool):
            raise ValueError(f"motion_weighted must be true or false, got {self.motion_weighted!r}")
        limit = motion_weight_limit(self.w_frame, self.frame_scale)
        if self.w_motion > 0 and self.w_motion >= limit:
            per_frame = "w_frame/m" if self.frame_scale == "mean" else "w_frame (frame_scale=frames)"
            raise ValueError(
                f"w_motion={self.w_motion} must be below {limit:.4g}: for a clip of m frames, in expectation over "
                f"its random pairs the motion term is -w_motion * 2/(m-1) * sum_f |yhat_f - mean(yhat)|^2 below "
                f"its cap, while the frame term costs {per_frame} * sum_f |yhat_f - y_f|^2; at w_motion >= "
                f"w_frame*(m-1)/{'(2m)' if self.frame_scale == 'mean' else '2'} (= {limit:.4g} for the shortest "
                f"clip, m=2) spreading the predicted frames apart lowers the loss without bound (up to the cap "
                f"motion_tau) instead of matching the video; lower w_motion or raise w_frame")

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> "ModelConfig":
        if preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], "preset": preset, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


FRAME_SCALES = ("mean", "frames")
RECON_LOSSES = ("l1", "mse")
# The authors' code (VideoUnetGPT.forward): CE + T * (L_img + L_img2) + 5 * L_t2i + L_unet, with L_img the
# motion-weighted squared frame error, L_img2 and L_t2i and L_unet L1 errors, and no pair term.
_PAPER_LOSS = dict(w_text=1.0, w_frame=1.0, w_diff=1.0, w_first=5.0, w_recon=1.0, w_motion=0.0,
                   frame_scale="frames", motion_weighted=True, recon_loss="l1")
LOSS_PRESETS: dict[str, dict] = {
    "paper": _PAPER_LOSS,
    # The project's own choice, measured on the synthetic set (BENCHMARKS.md, "Model quality"): the authors'
    # weights plus the paper's capped pair term against static collapse. Their L1 first-frame term stays:
    # on the demo's variant it is what makes the first frame follow colour and shape (without it, 25% colour
    # against 62% at the same steps); it only collapsed to the background where a per-clip random background
    # colour, which no caption predicts, dominated the first frame's error. The caption's next-token loss
    # weighs 0.1: the LM head is tied to the embeddings, and predicting "moves" after "circle" as after
    # "square" pulls the two words' states together until the first frame cannot tell them apart (demo at
    # 1000 steps: held-out shape 62% with w_text 1, 100% with 0.1).
    "default": {**_PAPER_LOSS, "w_text": 0.1, "w_motion": 0.1},
}


def motion_weight_limit(w_frame: float, frame_scale: str, frames: int = 2) -> float:
    """The w_motion at and above which the capped pair term rewards unbounded spread of a clip's predicted frames.

    For a clip of m frames with K pairs (i != j) drawn uniformly, E_pairs |a_i - a_j|^2 = 2/(m-1) * sum_f
    |a_f - mean(a)|^2. Below the cap the motion term is thus -w_motion * 2/(m-1) * spread, and the frame term
    costs c * sum_f |yhat_f - y_f|^2 with c = w_frame/m ("mean") or w_frame ("frames": T * mean over T frames),
    at least (motion weighting only raises it). Spread is free or rewarded iff w_motion >= c * (m-1)/2, i.e.
    w_frame*(m-1)/(2m) or w_frame*(m-1)/2, smallest for the shortest clip (m = 2 frames, what packing allows).
    """
    c = w_frame / frames if frame_scale == "mean" else w_frame
    return c * (frames - 1) / 2


_GPT2 = dict(n_positions=1024, unet_base=32, max_caption_tokens=64)
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=2, d_model=64, unet_base=8),
    "small": dict(n_layer=2, n_head=4, d_model=128, unet_base=8),     # the CPU demo
    "gpt2": dict(n_layer=12, n_head=12, d_model=768, **_GPT2),          # the paper's size
    "gpt2-medium": dict(n_layer=24, n_head=16, d_model=1024, **_GPT2),
    "gpt2-large": dict(n_layer=36, n_head=20, d_model=1280, **_GPT2),
    "gpt2-xl": dict(n_layer=48, n_head=25, d_model=1600, **_GPT2),
}


# ---------------------------------------------------------------------------------------- U-Net

def noise_level_embedding(beta: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the noise level beta in [0, 1) (scaled like a diffusion timestep)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=beta.device, dtype=torch.float32) / half)
    angles = (beta.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the noise embedding scales and shifts the middle activation."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class UNet(nn.Module):
    """Down path H -> H / 2^(levels-1) (the frame encoder), up path with skips back to H (reconstruction)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        chans = [cfg.unet_base * m for m in cfg.unet_mults]
        self.emb_dim = 4 * cfg.unet_base
        self.noise_mlp = nn.Sequential(nn.Linear(self.emb_dim, self.emb_dim), nn.SiLU(), nn.Linear(self.emb_dim, self.emb_dim))
        self.conv_in = nn.Conv2d(3, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c_prev = chans[0]
        for i, c in enumerate(chans):
            self.down.append(ResBlock(c_prev, c, self.emb_dim, cfg.unet_groups))
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
            c_prev = c
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(chans) - 1)):
            # U-Net's 2x2 up-convolution: a quarter of the FLOPs of nearest-upsample + 3x3 conv.
            self.upsample.append(nn.ConvTranspose2d(c_prev, chans[i], 2, stride=2))
            self.up.append(ResBlock(2 * chans[i], chans[i], self.emb_dim, cfg.unet_groups))
            c_prev = chans[i]
        self.norm_out = nn.GroupNorm(cfg.unet_groups, chans[0])
        self.conv_out = nn.Conv2d(chans[0], 3, 3, padding=1)
        self.bottleneck_shape = (chans[-1], cfg.image_size // 2 ** (len(chans) - 1), cfg.image_size // 2 ** (len(chans) - 1))

    def encode(self, x: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        emb = self.noise_mlp(noise_level_embedding(beta, self.emb_dim).to(x.dtype))
        # channels_last lets oneDNN (CPU) and cuDNN pick their fast NHWC convolutions, bf16 above all.
        h = self.conv_in(x.contiguous(memory_format=torch.channels_last))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            if i < len(self.downsample):
                skips.append(h)
                h = self.downsample[i](h)
        return h, skips, emb

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips)):
            h = upsample(h)
            h = block(torch.cat([h, skip], dim=1), emb)
        return torch.tanh(self.conv_out(F.silu(self.norm_out(h))))


# ------------------------------------------------------------------------------------- backbone

class TransposedLinears:
    """Copies of some nn.Linear weights as (in, out), for generation on the CPU with a batch of prompts.

    A generation step multiplies a few rows (one per prompt) by every weight matrix. MKL does that about 2x
    faster with the weight as (in, out) than with nn.Linear's (out, in), which it repacks on every call
    (bench/generate_throughput.py). Making the copies reads and writes every weight once, about a sixth of a
    32-frame batch of 8 for GPT-2 small, so the model keeps them across generate calls while it stays in
    eval mode; a copy is remade when its weight changed in place (version counter) or was replaced.
    """

    def __init__(self):
        self.weights: dict[nn.Linear, tuple[tuple, torch.Tensor]] = {}

    def refresh(self, modules) -> "TransposedLinears":
        for m in modules:
            w = m.weight
            stamp = (w._version, w.data_ptr(), w.dtype, w.device)
            held = self.weights.get(m)
            if held is None or held[0] != stamp:
                self.weights[m] = (stamp, w.detach().t().contiguous())
        return self

    def __call__(self, lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        wt = self.weights[lin][1]
        return torch.addmm(lin.bias, x.reshape(-1, x.shape[-1]), wt).view(*x.shape[:-1], wt.shape[1])


def run_linear(lin: nn.Linear, x: torch.Tensor, fast: TransposedLinears | None) -> torch.Tensor:
    return lin(x) if fast is None else fast(lin, x)


class KVCache:
    """Keys and values of one layer's earlier positions, in buffers allocated once for the whole generation."""

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self.k = self.v = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (B, H, L, hd) keys and values; return those of every position so far."""
        if self.k is None:
            B, H, _, hd = k.shape
            self.k = k.new_empty(B, H, self.capacity, hd)
            self.v = v.new_empty(B, H, self.capacity, hd)
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions, asked for {end}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def _heads(self, x: torch.Tensor, fast: TransposedLinears | None = None):
        B, L, D = x.shape
        q, k, v = run_linear(self.c_attn, x, fast).split(D, dim=2)
        return [t.view(B, L, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v)]

    def _merge(self, y: torch.Tensor, fast: TransposedLinears | None = None) -> torch.Tensor:
        B, H, L, hd = y.shape
        y = run_linear(self.c_proj, y.transpose(1, 2).reshape(B, L, H * hd), fast)
        return F.dropout(y, self.dropout, self.training)

    def forward(self, x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        q, k, v = self._heads(x)
        return self._merge(layout.attend(q, k, v, self.dropout if self.training else 0.0))

    def forward_cached(self, x: torch.Tensor, mask: torch.Tensor, cache: KVCache | None,
                       fast: TransposedLinears | None = None):
        """x: new positions (B, L, D); `cache` holds this layer's keys and values of earlier positions and is extended."""
        q, k, v = self._heads(x, fast)
        if cache is not None:
            k, v = cache.append(k, v)
        return self._merge(masked_attention(q, k, v, mask), fast)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, fast: TransposedLinears | None = None) -> torch.Tensor:
        h = F.gelu(run_linear(self.c_fc, x, fast), approximate="tanh")
        return F.dropout(run_linear(self.c_proj, h, fast), self.dropout, self.training)


class Block(nn.Module):
    """GPT-2 pre-LN block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), layout)
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: torch.Tensor, mask: torch.Tensor, cache: KVCache | None,
                       fast: TransposedLinears | None = None) -> torch.Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), mask, cache, fast)
        return x + self.mlp(self.ln_2(x), fast)


# ---------------------------------------------------------------------------------------- model

LOSS_TERMS = ("text", "frame", "diff", "first", "motion", "recon")   # the unweighted terms, in LossOutput order


@dataclass
class LossOutput:
    loss: torch.Tensor                                  # scalar: mean over samples of the weighted sum
    terms: dict[str, torch.Tensor] = field(default_factory=dict)       # unweighted means: text, frame, diff, first, recon, motion
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)  # (B,) each, plus "total"


def frames_to_float(frames_u8: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    return frames_u8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def float_to_frames(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float in [-1, 1] -> (N, H, W, 3) uint8."""
    return x.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


class T2VModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.unet = UNet(cfg)
        self.frame_token = nn.Linear(math.prod(self.unet.bottleneck_shape), cfg.d_model)
        self.frame_decoder = nn.Linear(cfg.d_model, 3 * cfg.image_size ** 2)
        self._transposed: TransposedLinears | None = None   # generation's weight copies (_generation_linears)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def num_params(self, backbone_only: bool = False) -> int:
        mods = [self.wte, self.wpe, self.blocks, self.ln_f] if backbone_only else [self]
        return sum(p.numel() for m in mods for p in m.parameters())

    # -- pieces shared by training and generation
    def noise_betas(self, frame_index: torch.Tensor) -> torch.Tensor:
        """beta of each frame from its index in its clip (0 = first frame) alone: min(noise_max, noise_slope * i)."""
        return (frame_index.float() * self.cfg.noise_slope).clamp(max=self.cfg.noise_max)

    def _noised(self, y: torch.Tensor, frame_index: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        beta = self.noise_betas(frame_index)
        b = beta[:, None, None, None].to(y.dtype)
        return (1 - b) * y + b * noise, beta

    def encode_frames(self, ybar: torch.Tensor, beta: torch.Tensor, fast: TransposedLinears | None = None):
        """Noised frames (N, 3, H, W) -> tokens (N, d_model), plus what the up path needs."""
        h, skips, emb = self.unet.encode(ybar, beta)
        return run_linear(self.frame_token, h.flatten(1), fast), (h, skips, emb)

    def decode_frames(self, z: torch.Tensor, fast: TransposedLinears | None = None) -> torch.Tensor:
        """Hidden states (N, d_model) -> frames (N, 3, H, W) in [-1, 1]."""
        s = self.cfg.image_size
        return torch.tanh(run_linear(self.frame_decoder, z, fast)).view(-1, 3, s, s)

    def validate_batch(self, batch: PackedBatch) -> None:
        cfg = self.cfg
        if batch.frames.dtype != torch.uint8:
            raise ValueError(f"batch.frames must be uint8, got {batch.frames.dtype}")
        if tuple(batch.frames.shape[1:]) != (cfg.image_size, cfg.image_size, 3):
            raise ValueError(f"batch.frames are {tuple(batch.frames.shape[1:])}, model expects "
                             f"{(cfg.image_size, cfg.image_size, 3)} (image_size={cfg.image_size})")
        if int(batch.position_ids.max()) >= cfg.n_positions:
            raise ValueError(f"a sample's caption plus frames takes {int(batch.position_ids.max()) + 1} positions, "
                             f"over n_positions={cfg.n_positions}")
        if int(batch.frame_index.max()) >= cfg.max_frames:
            raise ValueError(f"a clip has {int(batch.frame_index.max()) + 1} frames, over max_frames={cfg.max_frames}")
        n_text = torch.bincount(batch.text_sample, minlength=batch.num_samples) + 1
        if int(n_text.max()) > cfg.max_caption_tokens:
            raise ValueError(f"a caption has {int(n_text.max())} tokens, over max_caption_tokens={cfg.max_caption_tokens}")

    def _per_sample_randomness(self, batch: PackedBatch, shape: tuple[int, ...]):
        """Noise for the encoded frames and motion pairs, drawn per sample from its own seed, so a sample
        gets the same draws whether it is packed alone or with others. Pairs are drawn on the CPU (a few
        integers, no device sync per sample) and moved once; noise is drawn where the frames are."""
        device = batch.frames.device
        offsets = batch.frame_offsets.tolist()
        noise, pairs = [], []
        for b, seed in enumerate(batch.sample_seeds.tolist()):
            m = offsets[b + 1] - offsets[b]
            g = torch.Generator(device=device).manual_seed(seed)
            noise.append(torch.randn((m - 1, *shape), generator=g, device=device))
            g_pairs = torch.Generator().manual_seed(seed ^ 0x5DEECE66D)  # a stream apart from the noise's
            pairs.append(sample_motion_pairs(torch.tensor([0, m]), self.cfg.motion_pairs, g_pairs) + offsets[b])
        return torch.cat(noise), torch.cat(pairs).to(device, non_blocking=True)

    def forward(self, batch: PackedBatch) -> LossOutput:
        cfg = self.cfg
        self.validate_batch(batch)
        R, S = batch.input_ids.shape
        B, F_ = batch.num_samples, batch.num_frames
        dtype = self.wte.weight.dtype
        y = frames_to_float(batch.frames)                          # (F, 3, H, W) clean targets
        counts = (batch.frame_offsets[1:] - batch.frame_offsets[:-1])
        sample_of_frame = torch.repeat_interleave(torch.arange(B, device=y.device), counts, output_size=F_)
        is_last = torch.zeros(F_, dtype=torch.bool, device=y.device)
        is_last[batch.frame_offsets[1:] - 1] = True
        enc = (~is_last).nonzero().squeeze(1)                      # frames y_1..y_{m-1} of every sample

        noise, pairs = self._per_sample_randomness(batch, tuple(y.shape[1:]))
        ybar, beta = self._noised(y[enc], batch.frame_index[enc], noise)
        tokens, (h, skips, emb) = self.encode_frames(ybar.to(dtype), beta)
        ytilde = self.unet.decode(h, skips, emb)

        x = self.wte(batch.input_ids).view(R * S, -1)
        x = x.index_copy(0, batch.frame_token_pos, tokens.to(x.dtype))
        x = (x.view(R, S, -1) + self.wpe(batch.position_ids))
        x = F.dropout(x, cfg.dropout, self.training)
        layout = PackedLayout(batch.segment_ids, batch.seqlens, cfg.attn_backend)
        for block in self.blocks:
            x = block(x, layout)
        z = self.ln_f(x).view(R * S, -1)

        logits = z.index_select(0, batch.text_pred_pos) @ self.wte.weight.t()  # LM head: text positions only
        ce = F.cross_entropy(logits.float(), batch.text_targets, reduction="none")
        n_text = torch.zeros(B, device=ce.device).index_add(0, batch.text_sample, torch.ones_like(ce))
        text = torch.zeros(B, device=ce.device).index_add(0, batch.text_sample, ce) / n_text.clamp_min(1)

        yhat = self.decode_frames(z.index_select(0, batch.frame_pred_pos))
        frame_terms = motion_frame_loss(yhat.flatten(1), y.flatten(1), batch.frame_offsets, pairs,
                                        motion_weighted=cfg.motion_weighted, tau=cfg.motion_tau,
                                        backend=cfg.loss_backend)
        rec_err = ytilde.float() - y[enc]
        rec_err = (rec_err.abs() if cfg.recon_loss == "l1" else rec_err.pow(2)).flatten(1).mean(1)
        sample_of_enc = sample_of_frame[enc]
        recon = torch.zeros(B, device=y.device).index_add(0, sample_of_enc, rec_err)
        recon = recon / torch.bincount(sample_of_enc, minlength=B).clamp_min(1)

        per_sample = {"text": text, **{k: v.float() for k, v in frame_terms._asdict().items()}, "recon": recon}
        # The authors weight the frame and diff terms by the clip's frame count T (a sum over frames, not a mean).
        frame_scale = counts.float() if cfg.frame_scale == "frames" else 1.0
        total = (cfg.w_text * text + frame_scale * (cfg.w_frame * per_sample["frame"] + cfg.w_diff * per_sample["diff"])
                 + cfg.w_first * per_sample["first"] + cfg.w_recon * recon + cfg.w_motion * per_sample["motion"])
        per_sample["total"] = total
        terms = {k: v.mean() for k, v in per_sample.items() if k != "total"}
        return LossOutput(loss=total.mean(), terms=terms, per_sample=per_sample)

    # -- text only (used to check the GPT-2 weight import)
    def text_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, vocab) logits, causal, no frames."""
        B, L = input_ids.shape
        pos = torch.arange(L, device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)[None]
        mask = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()[None, None]
        for block in self.blocks:
            x = block.forward_cached(x, mask, None)
        return self.ln_f(x) @ self.wte.weight.t()

    # -- generation
    @torch.no_grad()
    def generate(self, token_ids: list[list[int]], num_frames: int, seed: int = 0, use_cache: bool = True,
                 as_float: bool = False, sample_ids: list[int] | None = None) -> torch.Tensor:
        """Captions (token ids, ending in <|endoftext|>) -> uint8 frames (B, num_frames, H, W, 3).

        Each generated frame is noised with its beta and encoded as the next token. The noise of caption b
        is drawn from its own generator, seeded by (seed, sample_ids[b]) (default: its index b), so a
        caption's video does not depend on the other captions of the batch: a caller that splits a prompt
        list into batches passes each prompt's index in the list. With the KV cache a new frame costs one
        token; `use_cache=False` recomputes the whole sequence (the check). `as_float` returns
        (B, num_frames, 3, H, W) floats in [-1, 1] instead.
        """
        cfg = self.cfg
        if not token_ids or any(len(t) == 0 for t in token_ids):
            raise ValueError("generate needs at least one caption, and no caption may be empty")
        sample_ids = list(range(len(token_ids))) if sample_ids is None else list(sample_ids)
        if len(sample_ids) != len(token_ids) or not all(isinstance(i, int) and i >= 0 for i in sample_ids):
            raise ValueError(f"sample_ids must be {len(token_ids)} ints >= 0 (one per caption), got {sample_ids}")
        if not 1 <= num_frames <= cfg.max_frames:
            raise ValueError(f"num_frames={num_frames} must be in [1, max_frames={cfg.max_frames}]")
        longest = max(len(t) for t in token_ids)
        if longest > cfg.max_caption_tokens:
            raise ValueError(f"a caption has {longest} tokens, over max_caption_tokens={cfg.max_caption_tokens}")
        if longest + num_frames - 1 > cfg.n_positions:
            raise ValueError(f"caption ({longest} tokens) plus {num_frames} frames exceeds n_positions={cfg.n_positions}")
        device, dtype = self.wte.weight.device, self.wte.weight.dtype
        B, L0 = len(token_ids), longest
        total = L0 + num_frames - 1                            # text + every encoded frame
        # Left-pad captions so that every sample's last text token sits at the same column.
        ids = torch.zeros(B, L0, dtype=torch.long, device=device)
        valid = torch.ones(B, total, dtype=torch.bool, device=device)   # real keys: all but the padding
        for b, t in enumerate(token_ids):
            ids[b, L0 - len(t):] = torch.tensor(t, device=device)
            valid[b, :L0 - len(t)] = False
        lengths = valid[:, :L0].sum(1)
        text_pos = (torch.arange(L0, device=device)[None] - (L0 - lengths)[:, None]).clamp_min(0)
        s = cfg.image_size
        noise = self._generation_noise(seed, sample_ids, num_frames - 1, (3, s, s), device)
        fast = self._generation_linears() if device.type == "cpu" and B > 1 else None
        caches = [KVCache(total) for _ in self.blocks] if use_cache else None
        pieces = [self.wte(ids) + self.wpe(text_pos)]          # embeddings not yet run through the blocks
        end = L0
        frames = []
        for t in range(num_frames):
            if use_cache:
                z = self._run_blocks(pieces[-1], valid[:, :end], end - pieces[-1].shape[1], caches, fast)
            else:
                z = self._run_blocks(torch.cat(pieces, dim=1), valid[:, :end], 0, None, fast)
            y = self.decode_frames(z[:, -1], fast)             # yhat_{t+1}
            frames.append(y)
            if t == num_frames - 1:
                break
            ybar, beta = self._noised(y, torch.full((B,), t, device=device), noise[:, t].to(y.dtype))
            tok, _ = self.encode_frames(ybar.to(dtype), beta, fast)
            pieces.append((tok + self.wpe(lengths + t))[:, None])
            end += 1
        video = torch.stack(frames, 1)
        return video if as_float else float_to_frames(video.flatten(0, 1)).view(B, num_frames, s, s, 3)

    def _generation_linears(self) -> TransposedLinears:
        """The weights a generation step multiplies by, transposed for a batch of prompts on the CPU.

        Kept for the next call in eval mode (t2v-generate's batches, t2v-eval); `train()` drops them, as
        DeepSpeed may update weights through views that do not bump their version counters."""
        linears = [m for m in (*self.blocks.modules(), self.frame_token, self.frame_decoder) if isinstance(m, nn.Linear)]
        if self.training:
            return TransposedLinears().refresh(linears)
        if self._transposed is None:
            self._transposed = TransposedLinears()
        return self._transposed.refresh(linears)

    def train(self, mode: bool = True) -> "T2VModel":
        if mode:
            self._transposed = None
        return super().train(mode)

    @staticmethod
    def _generation_noise(seed: int, sample_ids: list[int], n: int, shape: tuple[int, ...], device) -> torch.Tensor:
        """(B, n, *shape) noise, one generator per caption seeded by (seed, its sample id)."""
        out = torch.empty((len(sample_ids), n, *shape), device=device)
        for b, i in enumerate(sample_ids):
            g = torch.Generator(device=device).manual_seed(sample_seed(f"generate:{i}", seed))
            out[b] = torch.randn((n, *shape), generator=g, device=device)
        return out

    def _run_blocks(self, x: torch.Tensor, valid: torch.Tensor, start: int, caches: list[KVCache] | None,
                    fast: TransposedLinears | None = None) -> torch.Tensor:
        """Run new positions [start, start + L) through the blocks; `valid` marks real keys (not padding)."""
        total, L = valid.shape[1], x.shape[1]
        q_pos = torch.arange(start, start + L, device=x.device)
        k_pos = torch.arange(total, device=x.device)
        causal = k_pos[None, :] <= q_pos[:, None]
        mask = (causal[None] & valid[:, None, :]) | (k_pos[None, None, :] == q_pos[None, :, None])  # padding sees itself
        mask = mask[:, None]
        for i, block in enumerate(self.blocks):
            x = block.forward_cached(x, mask, caches[i] if caches is not None else None, fast)
        return self.ln_f(x)

    # -- cost model (for MFU)
    def flops_per_step(self, batch: PackedBatch) -> float:
        """Training FLOPs (forward + backward = 3x forward) of one packed batch, counted analytically."""
        cfg = self.cfg
        d = cfg.d_model
        dense = 12 * cfg.n_layer * d * d                                   # qkv, proj, mlp matmuls per token
        attn = 2 * cfg.n_layer * d * sum(L * L for L in batch.seqlens)   # QK^T and AV, causal half of 2*L^2*d
        head = d * cfg.vocab_size * batch.text_targets.numel()
        decoder = d * 3 * cfg.image_size ** 2 * batch.num_frames
        fwd = 2 * (dense * batch.num_tokens + head + decoder) + 2 * attn
        fwd += self.unet_flops_per_frame() * (batch.num_frames - batch.num_samples)
        return 3.0 * fwd

    def unet_flops_per_frame(self) -> float:
        if not hasattr(self, "_unet_flops"):
            from torch.utils.flop_counter import FlopCounterMode

            p = next(self.parameters())
            x = torch.zeros(1, 3, self.cfg.image_size, self.cfg.image_size, device=p.device, dtype=p.dtype)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                tok, (h, skips, emb) = self.encode_frames(x, torch.zeros(1, device=p.device))
                self.unet.decode(h, skips, emb)
            self._unet_flops = float(counter.get_total_flops())
        return self._unet_flops


# ---------------------------------------------------------------------------- GPT-2 weight import

def load_gpt2_weights(model: T2VModel, source) -> None:
    """Copy backbone weights from a `transformers` GPT2LMHeadModel, or a local folder holding one.

    Nothing is downloaded: a folder is opened with local_files_only=True.
    """
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        from transformers import GPT2LMHeadModel

        source = GPT2LMHeadModel.from_pretrained(str(source), local_files_only=True)
    hf = source.config
    cfg = model.cfg
    want = dict(n_layer=cfg.n_layer, n_embd=cfg.d_model, n_head=cfg.n_head, vocab_size=cfg.vocab_size)
    got = dict(n_layer=hf.n_layer, n_embd=hf.n_embd, n_head=hf.n_head, vocab_size=hf.vocab_size)
    if want != got:
        raise ValueError(f"GPT-2 checkpoint shape {got} does not match the model config {want}")
    sd = {k.removeprefix("transformer."): v for k, v in source.state_dict().items()}
    with torch.no_grad():
        model.wte.weight.copy_(sd["wte.weight"])
        n = min(cfg.n_positions, sd["wpe.weight"].shape[0])
        model.wpe.weight[:n].copy_(sd["wpe.weight"][:n])
        model.ln_f.weight.copy_(sd["ln_f.weight"])
        model.ln_f.bias.copy_(sd["ln_f.bias"])
        for i, block in enumerate(model.blocks):
            p = f"h.{i}."
            for ours, theirs in [(block.ln_1, "ln_1"), (block.ln_2, "ln_2")]:
                ours.weight.copy_(sd[p + theirs + ".weight"])
                ours.bias.copy_(sd[p + theirs + ".bias"])
            # transformers' Conv1D stores (in, out): transpose into nn.Linear's (out, in).
            for ours, theirs in [(block.attn.c_attn, "attn.c_attn"), (block.attn.c_proj, "attn.c_proj"),
                                 (block.mlp.c_fc, "mlp.c_fc"), (block.mlp.c_proj, "mlp.c_proj")]:
                ours.weight.copy_(sd[p + theirs + ".weight"].t())
                ours.bias.copy_(sd[p + theirs + ".bias"])


def build_model(cfg: ModelConfig, gpt2_path: str | None = None) -> T2VModel:
    model = T2VModel(cfg)
    if gpt2_path:
        load_gpt2_weights(model, gpt2_path)
    return model
