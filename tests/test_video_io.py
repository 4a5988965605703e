"""Sample videos: mp4/gif decode back with the right frame count and size; the contact sheet's layout."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from t2v_dist.video_io import contact_sheet, save_samples, upscale, write_contact_sheet, write_gif, write_mp4


def moving_square(t: int = 8, size: int = 32, color=(255, 40, 40)) -> np.ndarray:
    """A square moving right over a dark background: every frame differs from the last."""
    frames = np.full((t, size, size, 3), 20, dtype=np.uint8)
    for i in range(t):
        x = 2 + 3 * i
        frames[i, 10:18, x:x + 8] = color
    return frames


def decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_mp4_decodes_to_the_upscaled_frames(tmp_path):
    frames = moving_square(8)
    path = write_mp4(tmp_path / "a.mp4", frames, fps=8, scale=4)
    video = decode(path)
    assert video.shape == (8, 128, 128, 3)
    expected = upscale(frames, 4)
    # Lossy codec on flat colours at crf 17: small mean error, and the square is where it should be.
    assert np.abs(video.astype(int) - expected.astype(int)).mean() < 4
    for i in range(8):
        red = video[i, :, :, 0] > 128
        cols = np.nonzero(red.any(axis=0))[0]
        assert abs(cols.min() - 4 * (2 + 3 * i)) <= 2
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 8 and stream.codec_context.name == "h264"


def test_mp4_mpeg4_codec_and_odd_size_are_padded(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 9, 7, 3), dtype=np.uint8)
    video = decode(write_mp4(tmp_path / "odd.mp4", frames, scale=1, codec="mpeg4"))
    assert video.shape == (3, 10, 8, 3)


def test_mp4_from_torch_tensor(tmp_path):
    frames = torch.from_numpy(moving_square(4))
    assert decode(write_mp4(tmp_path / "t.mp4", frames, scale=2)).shape == (4, 64, 64, 3)


def test_gif_has_every_frame(tmp_path):
    frames = moving_square(6)
    path = write_gif(tmp_path / "a.gif", frames, fps=10, scale=2)
    with Image.open(path) as im:
        decoded = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
        assert im.info["loop"] == 0 and im.info["duration"] == 100
    assert len(decoded) == 6 and decoded[0].shape == (64, 64, 3)
    np.testing.assert_array_equal(decoded[3], upscale(frames, 2)[3])  # 3 colours fit a palette exactly


def test_contact_sheet_rows_and_cells(tmp_path):
    a, b = moving_square(5), moving_square(3, color=(40, 200, 40))
    sheet = contact_sheet([a, b], scale=2, gap=2)
    assert sheet.shape == (2 * (64 + 2) + 2, 5 * (64 + 2) + 2, 3)
    np.testing.assert_array_equal(sheet[2:66, 2:66], upscale(a, 2)[0])
    np.testing.assert_array_equal(sheet[68:132, 2 + 66 * 2:66 * 3], upscale(b, 2)[2])
    assert (sheet[68:132, 2 + 66 * 3:66 * 4] == 255).all()  # row 2 has only 3 frames: blank cell
    path = write_contact_sheet(tmp_path / "sheet.png", [a, b], scale=2)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), sheet)


def test_save_samples_writes_each_format(tmp_path):
    videos = np.stack([moving_square(4), moving_square(4, color=(0, 0, 255))])
    paths = save_samples(tmp_path / "eval", videos, formats=["mp4", "png"], fps=4, scale=2, prefix="step10")
    assert sorted(p.name for p in paths) == ["step10_0.mp4", "step10_1.mp4", "step10_sheet.png"]
    assert Image.open(tmp_path / "eval" / "step10_sheet.png").size == (4 * 66 + 2, 2 * 66 + 2)
    assert decode(tmp_path / "eval" / "step10_1.mp4").shape == (4, 64, 64, 3)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 32, 32, 3), dtype=np.float32), "uint8"),
    (np.zeros((32, 32, 3), dtype=np.uint8), r"\(T, H, W, 3\)"),
    (np.zeros((4, 32, 32, 4), dtype=np.uint8), r"\(T, H, W, 3\)"),
    (np.zeros((0, 32, 32, 3), dtype=np.uint8), r"\(T, H, W, 3\)"),
])
def test_bad_frames_are_rejected(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        write_mp4(tmp_path / "x.mp4", bad)
    with pytest.raises(ValueError, match=match):
        write_gif(tmp_path / "x.gif", bad)
    assert not (tmp_path / "x.gif").exists()


def test_bad_arguments_are_rejected(tmp_path):
    frames = moving_square(2)
    with pytest.raises(ValueError, match="scale"):
        write_mp4(tmp_path / "x.mp4", frames, scale=0)
    with pytest.raises(ValueError, match="fps"):
        write_gif(tmp_path / "x.gif", frames, fps=0)
    with pytest.raises(ValueError, match="formats"):
        save_samples(tmp_path, [frames], formats=["webm"])
    with pytest.raises(ValueError, match=r"clips\[1\]"):
        contact_sheet([frames, moving_square(2, size=16)])
    with pytest.raises(ValueError, match="no clips"):
        contact_sheet([])


def test_contact_sheet_writes_each_caption_under_its_row(tmp_path):
    a, b = moving_square(5), moving_square(3, color=(40, 200, 40))
    plain = contact_sheet([a, b], scale=2, gap=2)
    long = "a blue square moves right " * 4  # wider than 5 frames of 64 px: wrapped onto a second line
    sheet = contact_sheet([a, b], scale=2, gap=2, captions=["a red circle moves left", long])
    line_h = 12
    assert sheet.shape == (plain.shape[0] + 3 * line_h, plain.shape[1], 3)
    # Frames move down by the caption bands above them, pixel for pixel.
    np.testing.assert_array_equal(sheet[2:66, 2:66], upscale(a, 2)[0])
    row2 = 2 + 64 + 2 + line_h
    np.testing.assert_array_equal(sheet[row2:row2 + 64, 2 + 66 * 2:66 * 3], upscale(b, 2)[2])

    def ink_rows(top, bottom):
        band = sheet[top:bottom]
        return (band.min(axis=2) < 100).any(axis=1)

    assert ink_rows(66, 66 + line_h).sum() >= 5                          # caption 1 under row 1
    assert ink_rows(row2 + 64, row2 + 64 + 2 * line_h)[line_h:].sum() >= 5  # caption 2 wraps to a 2nd line
    # Different captions draw different ink; the text is black on the white sheet.
    assert not np.array_equal(sheet[66:66 + line_h, :100], sheet[row2 + 64:row2 + 64 + line_h, :100])
    assert set(np.unique(sheet[66:66 + line_h])) <= {0, 255}
    path = write_contact_sheet(tmp_path / "sheet.png", [a, b], scale=2, captions=["x", "caf\u00e9 \u4e2d"])
    assert Image.open(path).size == (plain.shape[1], plain.shape[0] + 2 * line_h)  # non-Latin-1 drawn as '?'
    with pytest.raises(ValueError, match="2 captions for 1 clips"):
        contact_sheet([a], captions=["x", "y"])


def test_save_samples_sheet_has_captions(tmp_path):
    videos = np.stack([moving_square(4), moving_square(4, color=(0, 0, 255))])
    save_samples(tmp_path, videos, formats=["png"], scale=1, captions=["one", "two"])
    assert Image.open(tmp_path / "sample_sheet.png").size == (4 * 34 + 2, 2 * (34 + 12) + 2)
