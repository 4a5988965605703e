"""The model: shapes, presets, packing equivalence, KV-cache generation, gradients, GPT-2 import, bad input."""
import numpy as np
import pytest
import torch

from t2v_dist.model import LOSS_TERMS, PRESETS, ModelConfig, T2VModel, load_gpt2_weights
from t2v_dist.packing import pack_samples
from t2v_dist.tokenizer import encode_caption, load_tokenizer

CAPTIONS = ["a red circle moves left", "a small blue square is moving up", "green triangle",
            "a yellow circle moves down and a purple square moves right"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def make_samples(tok, frame_counts, size=32, seed=0, max_tokens=32):
    rng = np.random.default_rng(seed)
    return [dict(key=f"s{seed}_{i}", tokens=encode_caption(tok, CAPTIONS[i % len(CAPTIONS)], max_tokens),
                 frames=rng.integers(0, 256, (m, size, size, 3), dtype=np.uint8))
            for i, m in enumerate(frame_counts)]


def tiny(**kw):
    torch.manual_seed(0)
    return T2VModel(ModelConfig.from_preset("tiny", **kw))


def test_tokenizer_is_real_gpt2(tok):
    assert len(tok) == 50257
    assert tok.encode("a person playing guitar") == [64, 1048, 2712, 10047]
    assert tok.decode(tok.encode("héllo wörld, 123!")) == "héllo wörld, 123!"
    ids = encode_caption(tok, "a red circle moves left", 32)
    assert ids[-1] == tok.eot_id and ids[:-1] == tok.encode("a red circle moves left")


def test_tokenizer_rejects_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        load_tokenizer(str(tmp_path / "nope"))


def test_presets_sizes():
    with torch.device("meta"):
        gpt2 = T2VModel(ModelConfig.from_preset("gpt2"))
        xl = T2VModel(ModelConfig.from_preset("gpt2-xl"))
    # GPT-2 small has 124.4M parameters (wte + wpe + 12 blocks + ln_f); the backbone must match it.
    assert abs(gpt2.num_params(backbone_only=True) - 124.44e6) < 0.05e6
    assert abs(xl.num_params(backbone_only=True) - 1557.6e6) < 1e6
    assert set(PRESETS) == {"tiny", "small", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.from_preset("gpt5")


@pytest.mark.parametrize("size", [32, 64])
def test_forward_shapes_and_resolutions(tok, size):
    model = tiny(image_size=size)
    batch = pack_samples(make_samples(tok, [3, 2, 5], size=size), 32, seed=0)
    out = model(batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert tuple(out.terms) == LOSS_TERMS == ("text", "frame", "diff", "first", "motion", "recon")
    assert all(v.shape == (3,) for v in out.per_sample.values())
    video = model.generate([s["tokens"] for s in make_samples(tok, [2, 2])], num_frames=3, seed=0)
    assert video.shape == (2, 3, size, size, 3) and video.dtype == torch.uint8


def test_packed_equals_one_by_one(tok):
    model = tiny(motion_weighted=True).eval()
    samples = make_samples(tok, [2, 7, 4, 16, 3, 9])
    packed = pack_samples(samples, 40, seed=5)
    assert packed.shape[0] < len(samples)  # several samples really share rows
    together = model(packed).per_sample
    for b, s in enumerate(samples):
        alone = model(pack_samples([s], 40, seed=5)).per_sample
        for term, value in alone.items():
            torch.testing.assert_close(together[term][b], value[0], rtol=1e-5, atol=1e-5, msg=f"{term} of sample {b}")


def test_attention_does_not_cross_samples(tok):
    """Changing one sample's frames must not change another sample's losses in the same row."""
    model = tiny().eval()
    samples = make_samples(tok, [4, 4])
    base = model(pack_samples(samples, 64, seed=0)).per_sample["text"]
    samples[0]["frames"] = 255 - samples[0]["frames"]
    changed = model(pack_samples(samples, 64, seed=0)).per_sample
    assert pack_samples(samples, 64).shape[0] == 1
    torch.testing.assert_close(changed["text"][1], base[1], rtol=0, atol=1e-6)


def test_cached_generation_equals_uncached(tok):
    model = tiny().eval()
    ids = [s["tokens"] for s in make_samples(tok, [2, 2, 2, 2])]  # captions of different lengths
    cached = model.generate(ids, num_frames=8, seed=11, use_cache=True, as_float=True)
    full = model.generate(ids, num_frames=8, seed=11, use_cache=False, as_float=True)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cached, model.generate(ids, num_frames=8, seed=12, as_float=True))  # the seed matters
    # Left padding is invisible: each caption's first frame equals generating it alone.
    for b, t in enumerate(ids):
        torch.testing.assert_close(model.generate([t], num_frames=1, as_float=True)[0], cached[b, :1], rtol=1e-5, atol=1e-5)
    video = model.generate(ids, num_frames=3, seed=0)
    assert video.dtype == torch.uint8 and video.shape == (4, 3, 32, 32, 3)


def test_kept_generation_weights_follow_every_weight_change(tok):
    """Batched CPU generation keeps transposed weight copies between calls; no change of the weights may be missed."""
    model, other = tiny().eval(), tiny()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = [s["tokens"] for s in make_samples(tok, [2, 2])]

    def fresh(state):  # the reference: a new model that has never generated
        ref = tiny().eval()
        ref.load_state_dict(state)
        return ref.generate(ids, num_frames=4, seed=1, as_float=True)

    first = model.generate(ids, num_frames=4, seed=1, as_float=True)
    copies = model._transposed
    torch.testing.assert_close(model.generate(ids, num_frames=4, seed=1, as_float=True), first, rtol=0, atol=0)
    assert model._transposed is copies  # kept, not remade
    model.load_state_dict(other.state_dict())  # in place: the version counters move
    torch.testing.assert_close(model.generate(ids, num_frames=4, seed=1, as_float=True), fresh(other.state_dict()))
    # DeepSpeed writes weights through views of its flat buffers, which the counters do not see: train() drops the copies.
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    offset = 0
    for p in model.parameters():
        p.data = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    model.generate(ids, num_frames=4, seed=1)  # copies of the weights as they sit in the flat buffer
    model.train()
    assert model._transposed is None
    flat.mul_(0.9)  # "the optimizer step"
    model.eval()
    torch.testing.assert_close(model.generate(ids, num_frames=4, seed=1, as_float=True), fresh(model.state_dict()))


def test_noise_schedule_is_the_authors_and_ignores_max_frames():
    """beta_i = min(0.9, 2 * 0.9 / 1023 * i): the authors' 2 * linspace(0, 0.9, 1024)[i], whatever max_frames is."""
    frames = torch.tensor([0, 7, 15])
    want = torch.tensor([0.0, 7 * 1.8 / 1023, 15 * 1.8 / 1023])
    for max_frames in (16, 64, 1024):
        torch.testing.assert_close(tiny(max_frames=max_frames).noise_betas(frames), want)
    assert abs(float(want[2]) - 0.0264) < 1e-4
    capped = tiny(noise_slope=0.1, noise_max=0.5).noise_betas(torch.tensor([0, 3, 5, 60]))
    torch.testing.assert_close(capped, torch.tensor([0.0, 0.3, 0.5, 0.5]))
    for bad in (dict(noise_max=1.0), dict(noise_max=-0.1), dict(noise_slope=-1e-3), dict(noise_slope=float("nan"))):
        with pytest.raises(ValueError, match="noise_"):
            ModelConfig.from_preset("tiny", **bad)


def test_generation_noise_is_per_prompt(tok):
    """A prompt's video depends on (seed, its index), not on the other prompts of its batch."""
    model = tiny(noise_slope=0.05).eval()  # strong noise, so that a different draw shows in the video
    ids = [s["tokens"] for s in make_samples(tok, [2, 2, 2, 2])]
    batch = model.generate(ids, num_frames=6, seed=3, as_float=True)
    for b, t in enumerate(ids):
        alone = model.generate([t], num_frames=6, seed=3, as_float=True, sample_ids=[b])
        torch.testing.assert_close(alone[0], batch[b], rtol=1e-5, atol=1e-5)
    # A CLI that splits 4 prompts into batches of 2 gets the same videos by passing the prompts' indices.
    second = model.generate(ids[2:], num_frames=6, seed=3, as_float=True, sample_ids=[2, 3])
    torch.testing.assert_close(second, batch[2:], rtol=1e-5, atol=1e-5)
    # The index matters: the same caption at another index gets other noise (frame 0 is noise-free).
    moved = model.generate([ids[0]], num_frames=6, seed=3, as_float=True, sample_ids=[1])
    assert not torch.allclose(moved[0, 1:], batch[0, 1:], atol=1e-4)
    with pytest.raises(ValueError, match="sample_ids"):
        model.generate(ids, num_frames=2, sample_ids=[0])


def test_loss_presets_fill_the_fields_and_explicit_values_win():
    from t2v_dist.config import Config, ConfigError

    paper = ModelConfig.from_preset("tiny", loss_preset="paper")
    assert (paper.w_frame, paper.w_diff, paper.w_first, paper.w_recon, paper.w_motion) == (1.0, 1.0, 5.0, 1.0, 0.0)
    assert (paper.frame_scale, paper.motion_weighted, paper.recon_loss) == ("frames", True, "l1")
    mine = ModelConfig.from_preset("gpt2", loss_preset="paper", w_first=2.0, frame_scale="mean")
    assert (mine.w_first, mine.frame_scale, mine.w_diff) == (2.0, "mean", 1.0)
    assert ModelConfig(**mine.to_dict()) == mine          # a saved config reloads to the same values
    cfg = Config.load(None, ["--model.loss_preset=paper", "--model.w_diff=0.5", "--model.recon_loss=mse"]).model
    assert (cfg.loss_preset, cfg.w_diff, cfg.recon_loss, cfg.w_first) == ("paper", 0.5, "mse", 5.0)
    for bad, message in [(dict(loss_preset="authors"), "unknown loss_preset"), (dict(w_diff=-1.0), "w_diff"),
                         (dict(frame_scale="sum"), "frame_scale"), (dict(recon_loss="l3"), "recon_loss")]:
        with pytest.raises(ValueError, match=message):
            ModelConfig.from_preset("tiny", **bad)
    with pytest.raises(ConfigError, match="model: w_motion"):
        Config.load(None, ["--model.w_motion=0.9"])


@pytest.mark.parametrize("frame_scale", ["mean", "frames"])
def test_motion_weight_limit_is_where_spreading_frames_starts_to_pay(frame_scale):
    """Below the cap, the frame + pair objective (pairs: every ordered pair, the expectation of the random draw)
    grows with the spread of the predictions just below the limit and falls just above it, for any clip length."""
    from ops import motion_frame_loss
    from t2v_dist.model import motion_weight_limit

    limit = motion_weight_limit(1.0, frame_scale)
    assert limit == (0.25 if frame_scale == "mean" else 0.5)
    ModelConfig.from_preset("tiny", w_motion=0.99 * limit, frame_scale=frame_scale)
    with pytest.raises(ValueError, match=r"w_motion=.* must be below .*spreading the predicted frames apart"):
        ModelConfig.from_preset("tiny", w_motion=limit, frame_scale=frame_scale)
    for m in (2, 3, 7):
        g = torch.Generator().manual_seed(m)
        y = torch.rand(m, 12, generator=g)
        pairs = torch.tensor([(i, j) for i in range(m) for j in range(m) if i != j])
        direction = torch.randn(m, 12, generator=g)
        direction -= direction.mean(0)                    # pure spread: the mean frame stays put
        limit_m = motion_weight_limit(1.0, frame_scale, frames=m)

        def objective(w_motion, t):
            losses = motion_frame_loss(y + t * direction, y, torch.tensor([0, m]), pairs, tau=1e9)
            scale = m if frame_scale == "frames" else 1
            return float(scale * losses.frame + w_motion * losses.motion)

        # The objective is quadratic in t, plus the constant pair term of y: compare t = 10 with t = -10.
        for w, grows in ((0.95 * limit_m, True), (1.05 * limit_m, False)):
            big = objective(w, 10.0) + objective(w, -10.0) - 2 * objective(w, 0.0)
            assert (big > 0) == grows, (m, w, big)


@pytest.mark.parametrize("frame_scale", ["mean", "frames"])
def test_total_is_the_weighted_sum_of_the_terms(tok, frame_scale):
    w = dict(w_text=0.5, w_frame=2.0, w_diff=3.0, w_first=4.0, w_recon=0.7, w_motion=0.05)
    model = tiny(frame_scale=frame_scale, **w).eval()
    batch = pack_samples(make_samples(tok, [3, 6, 2]), 32, seed=0)
    out = model(batch).per_sample
    m = (batch.frame_offsets[1:] - batch.frame_offsets[:-1]).float()
    s = m if frame_scale == "frames" else 1.0
    want = (w["w_text"] * out["text"] + s * (w["w_frame"] * out["frame"] + w["w_diff"] * out["diff"])
            + w["w_first"] * out["first"] + w["w_recon"] * out["recon"] + w["w_motion"] * out["motion"])
    torch.testing.assert_close(out["total"], want)
    assert bool((out["diff"] > 0).all() & (out["first"] > 0).all())


def test_every_parameter_gets_a_gradient(tok):
    model = tiny(motion_weighted=True, motion_tau=10.0)
    model(pack_samples(make_samples(tok, [3, 5, 2]), 32, seed=0)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"parameters without gradient: {missing}"


def test_gpt2_weight_import_matches_transformers():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=128, vocab_size=50257)).eval()
    model = tiny().eval()
    load_gpt2_weights(model, hf)
    ids = torch.randint(0, 50257, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(model.text_logits(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="does not match"):
        load_gpt2_weights(T2VModel(ModelConfig.from_preset("tiny", d_model=32)), hf)


def test_gpt2_weight_import_from_local_folder(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=64)).save_pretrained(tmp_path)
    model = tiny()
    load_gpt2_weights(model, tmp_path)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert torch.equal(model.blocks[1].mlp.c_fc.weight, hf.transformer.h[1].mlp.c_fc.weight.t())


def test_bad_inputs_raise_clear_errors(tok):
    model = tiny()
    good = make_samples(tok, [3])[0]
    with pytest.raises(ValueError, match="uint8"):
        pack_samples([{**good, "frames": good["frames"].astype(np.float32)}], 32)
    with pytest.raises(ValueError, match="shape"):
        pack_samples([{**good, "frames": good["frames"][..., :2]}], 32)
    with pytest.raises(ValueError, match="at least 2 frames"):
        pack_samples([{**good, "frames": good["frames"][:1]}], 32)
    with pytest.raises(ValueError, match="image_size"):
        model(pack_samples(make_samples(tok, [3], size=16), 32))
    with pytest.raises(ValueError, match="empty"):
        encode_caption(tok, "   ", 32)
    with pytest.raises(ValueError, match="max_caption_tokens=4"):
        encode_caption(tok, "a red circle moves left", 4)
    with pytest.raises(ValueError, match="token_budget"):
        pack_samples([good], 4)
    long_clip = make_samples(tok, [300])[0]
    with pytest.raises(ValueError, match="n_positions=256"):
        model(pack_samples([long_clip], 512))
    with pytest.raises(ValueError, match="max_frames=8"):
        tiny(max_frames=8)(pack_samples(make_samples(tok, [9]), 64))
    with pytest.raises(ValueError, match="num_frames"):
        model.generate([good["tokens"]], num_frames=0)
    with pytest.raises(ValueError, match="image_size=36"):
        ModelConfig.from_preset("tiny", image_size=36)


def test_fuzz_packing_matches_unpacked(tok):
    """Random sample mixes and budgets: every sample's loss is independent of its row-mates."""
    model = tiny().eval()
    rng = np.random.default_rng(123)
    for trial in range(3):
        counts = rng.integers(2, 12, size=int(rng.integers(1, 6))).tolist()
        samples = make_samples(tok, counts, seed=trial)
        budget = int(rng.integers(max(len(s["tokens"]) + len(s["frames"]) - 1 for s in samples), 60))
        packed = model(pack_samples(samples, budget, seed=trial)).per_sample["total"]
        for b, s in enumerate(samples):
            alone = model(pack_samples([s], budget, seed=trial)).per_sample["total"][0]
            torch.testing.assert_close(packed[b], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, dict(d_model=256, n_head=4, n_layer=4)])
def test_flops_per_step_matches_pytorch_flop_counter(tok, overrides):
    """MFU rests on the analytic count: it must agree with what PyTorch counts for forward + backward."""
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny(**overrides)
    batch = pack_samples(make_samples(tok, [12, 12, 12]), 64)
    with FlopCounterMode(display=False) as counter:
        model(batch).loss.backward()
    counted = counter.get_total_flops()
    assert abs(model.flops_per_step(batch) - counted) / counted < 0.03


def test_tiny_model_overfits_one_batch(tok):
    model = tiny(w_motion=0.0)
    batch = pack_samples(make_samples(tok, [4, 3, 5], seed=1), 32, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(150):
        loss = model(batch).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, (first, loss.item())
