"""The ``carn-stream`` command line: eval, upscale-image and its errors."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from carn_stream.cli import main
from carn_stream.pipeline.media.images import read_rgb, write_png

EVAL_KEYS = {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "images", "scale", "precision"}


@pytest.fixture()
def small_hr_folder(data_dir, tmp_path) -> Path:
    """Two 60x60 crops of Set5 images (fast to evaluate)."""
    folder = tmp_path / "hr"
    folder.mkdir()
    for name in ("bird.png", "head.png"):
        image = read_rgb(data_dir / "images" / "Set5" / name)
        write_png(folder / name, image[100:160, 100:160])
    (folder / "notes.txt").write_text("ignored: not an image")
    return folder


def test_eval_json_has_the_documented_schema(small_hr_folder, weights_path, capsys):
    code = main(
        [
            "eval",
            "--weights",
            str(weights_path),
            "--data",
            str(small_hr_folder),
            "--scale",
            "3",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == EVAL_KEYS
    assert summary["images"] == 2 and summary["scale"] == 3
    assert 0 < summary["ssim"] <= 1 and 0 < summary["bicubic_ssim"] <= 1
    assert summary["psnr"] > summary["bicubic_psnr"]


def test_eval_table_prints_model_and_bicubic_side_by_side(small_hr_folder, weights_path, capsys):
    assert (
        main(
            ["eval", "--weights", str(weights_path), "--data", str(small_hr_folder), "--scale", "2"]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "bicubic PSNR" in captured.out and "bird.png" in captured.out
    assert "mean" in captured.out
    assert "eval x2" in captured.err  # progress on stderr, results on stdout


def test_upscale_image_writes_a_png_of_scale_times_the_input(data_dir, weights_path, tmp_path):
    src = tmp_path / "in.png"
    write_png(src, read_rgb(data_dir / "images" / "Set5" / "head.png")[:37, :51])
    out = tmp_path / "out.png"
    assert (
        main(["upscale-image", str(src), str(out), "--scale", "4", "--weights", str(weights_path)])
        == 0
    )
    assert read_rgb(out).shape == (148, 204, 3)
    again = ["upscale-image", str(src), str(out), "--scale", "2", "--weights", str(weights_path)]
    assert main(again) == 1  # was replaced without a word; `upscale` refuses alike
    assert read_rgb(out).shape == (148, 204, 3)
    assert main([*again, "--overwrite"]) == 0
    assert read_rgb(out).shape == (74, 102, 3)


def test_upscale_image_keeps_the_transparency(data_dir, weights_path, tmp_path):
    """A PNG with an alpha plane (a logo, a sprite) came out opaque: the colours under its
    transparent part showed. Its alpha is upscaled too (by the model, as a grey picture) and
    the output is RGBA; the colours are those of the same picture without alpha."""
    from carn_stream.pipeline.media.images import read_image

    with av.open(str(data_dir / "video" / "carphone_pristine.mp4")) as c:
        rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")[:48, :64]
    alpha = np.full((48, 64), 255, np.uint8)
    alpha[:, :24] = 0  # transparent on the left, a soft edge, opaque on the right
    alpha[:, 24:32] = np.linspace(0, 255, 8).astype(np.uint8)
    write_png(tmp_path / "logo.png", rgb, alpha)
    write_png(tmp_path / "opaque.png", rgb)
    for name in ("logo", "opaque"):
        args = ["upscale-image", str(tmp_path / f"{name}.png"), str(tmp_path / f"{name}_x2.png"),
                "--scale", "2", "--weights", str(weights_path), "--precision", "fp32"]
        assert main(args) == 0
    out, out_alpha = read_image(tmp_path / "logo_x2.png")
    opaque, no_alpha = read_image(tmp_path / "opaque_x2.png")
    assert no_alpha is None and out_alpha is not None and out_alpha.shape == (96, 128)
    assert np.array_equal(out, opaque)
    assert out_alpha[:, :44].max() <= 2 and out_alpha[:, 68:].min() >= 253
    ramp = out_alpha[:, 44:68].mean(axis=0)
    assert np.all(np.diff(ramp) >= -2) and ramp[-1] - ramp[0] > 200  # the soft edge, rising


def test_weights_come_from_carn_weights_when_no_flag(data_dir, weights_path, tmp_path, monkeypatch):
    monkeypatch.setenv("CARN_WEIGHTS", str(weights_path))
    src = tmp_path / "in.png"
    write_png(src, np.full((9, 7, 3), 128, np.uint8))
    assert main(["upscale-image", str(src), str(tmp_path / "o.png"), "--scale", "2"]) == 0
    monkeypatch.setenv("CARN_WEIGHTS", str(tmp_path / "absent.pth"))
    assert main(["upscale-image", str(src), str(tmp_path / "o2.png"), "--scale", "2"]) == 1
    assert not (tmp_path / "o2.png").exists()


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carn_stream.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["upscale-image", "{missing}", "{out}", "--scale", "2"], "no such file"),
        (["upscale-image", "{text}", "{out}", "--scale", "2"], "not a readable image"),
        (["upscale-image", "{image}", "{out}", "--scale", "2", "--weights", "{text}"], "corrupt"),
        (
            ["upscale-image", "{image}", "{out}", "--scale", "2", "--weights", "{missing}"],
            "does not exist",
        ),
        (["upscale-image", "{image}", "{out}", "--scale", "2"], "CARN_WEIGHTS"),
        (["upscale-image", "{image}", "{tmp}/o.jpg", "--scale", "2"], "must be a .png"),
        (
            ["eval", "--data", "{tmp}/empty", "--scale", "2", "--weights", "{weights}"],
            "holds no image files",
        ),
    ],
)
def test_bad_input_gives_one_clear_line_and_exit_1(args, message, tmp_path, weights_path):
    (tmp_path / "empty").mkdir()
    text = tmp_path / "text.png"
    text.write_text("hello")
    image = tmp_path / "image.png"
    write_png(image, np.zeros((8, 8, 3), np.uint8))
    names = {
        "missing": tmp_path / "missing.png",
        "out": tmp_path / "out.png",
        "text": text,
        "image": image,
        "tmp": tmp_path,
        "weights": weights_path,
    }
    argv = [a.format(**names) for a in args]
    result = run_cli(
        *argv,
        env={
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "CARN_STREAM_ALLOW_DOWNLOAD": "0",
            "CARN_STREAM_ALLOW_BUNDLED_WEIGHTS": "0",
            "CARN_WEIGHTS": "",
        },
    )
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


def test_unsupported_scale_is_a_usage_error():
    result = run_cli("eval", "--data", ".", "--scale", "8")
    assert result.returncode == 2 and "unsupported scale '8'" in result.stderr


def test_console_script_is_installed():
    result = subprocess.run(
        ["carn-stream", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.startswith("carn-stream ")


@pytest.fixture()
def tiny_clip(data_dir, tmp_path) -> Path:
    from fractions import Fraction

    from tests.media import decode_rgb, write_clip

    frames = [f[:48, :64] for f in decode_rgb(data_dir / "video" / "carphone_pristine.mp4", 6)]
    return write_clip(tmp_path / "tiny.mp4", frames, rate=Fraction(30000, 1001))


@pytest.mark.parametrize("output", ["itself", "itself through a linked folder",
                                    "the file its input links to", "a folder run into its folder"])
def test_upscale_refuses_to_replace_its_input_even_with_overwrite(output, tiny_clip, tmp_path):
    before = tiny_clip.read_bytes()
    if output == "itself":
        args, named = [str(tiny_clip), str(tiny_clip)], tiny_clip
    elif output == "itself through a linked folder":
        (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
        args, named = [str(tiny_clip), str(tmp_path / "alias" / "tiny.mp4")], tiny_clip
    elif output == "the file its input links to":
        (tmp_path / "in.mp4").symlink_to(tiny_clip)
        args, named = [str(tmp_path / "in.mp4"), str(tiny_clip)], tmp_path / "in.mp4"
    else:
        args, named = [str(tmp_path), str(tmp_path)], tmp_path / "tiny.mp4"
    result = run_cli("upscale", *args, "--scale", "2", "--overwrite", "--precision", "fp32")
    assert result.returncode == 1  # was: the input's file given to its upscaled copy
    instead = "use another folder" if output.startswith("a folder run") else "choose another output"
    assert result.stderr.strip() == (
        f"carn-stream upscale: error: {named} would be replaced by its own output; {instead}"
    )
    assert tiny_clip.read_bytes() == before


def test_an_output_that_links_to_the_input_is_replaced_and_the_input_kept(
    tiny_clip, weights_path, tmp_path
):
    before = tiny_clip.read_bytes()
    (tmp_path / "link.mp4").symlink_to(tiny_clip)
    result = run_cli("upscale", str(tiny_clip), str(tmp_path / "link.mp4"), "--scale", "2",
                     "--overwrite", "--precision", "fp32", "--weights", str(weights_path))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "link.mp4").is_symlink()  # the link replaced by the output
    assert tiny_clip.read_bytes() == before
    with av.open(str(tmp_path / "link.mp4")) as container:
        assert container.streams.video[0].codec_context.width == 128


def test_upscale_writes_mp4_and_shows_progress(tiny_clip, weights_path, tmp_path):
    from tests.media import facts

    out = tmp_path / "up.mp4"
    result = run_cli(
        "upscale",
        str(tiny_clip),
        str(out),
        "--scale",
        "3",
        "--weights",
        str(weights_path),
        "--crf",
        "20",
        "--preset",
        "ultrafast",
    )
    assert result.returncode == 0, result.stderr
    assert "upscale x3" in result.stderr and "6/6" in result.stderr
    # The first line measures nothing yet: no rate, no ETA (was "1/6 40556.43 frames/s ETA 0s").
    assert "1/6 measuring speed" in result.stderr
    got = facts(out)
    assert (got.width, got.height) == (192, 144) and len(got.pts) == 6


def test_upscale_takes_raw_h264_streams_at_their_own_rate_or_the_one_given(
    data_dir, weights_path, tmp_path
):
    """A raw H.264 stream (.h264: no container, no timestamps, as cameras write) was refused.
    Its frames are timed at its header's rate, or at --input-fps; a folder run takes .h264."""
    from fractions import Fraction

    from tests.media import decode_rgb, facts, raw_stream, write_clip

    frames = [f[:48, :64] for f in decode_rgb(data_dir / "video" / "carphone_pristine.mp4", 8)]
    clip = write_clip(tmp_path / "clip.mp4", frames, rate=Fraction(30000, 1001),
                      options={"crf": "20", "preset": "veryfast", "bf": "2"})  # fmt: skip
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    raw = raw_stream(clip, inputs / "cam.h264")
    common = ("--scale", "2", "--weights", str(weights_path), "--preset", "ultrafast",
              "--precision", "fp32")
    out = tmp_path / "cam.mp4"
    result = run_cli("upscale", str(raw), str(out), *common)
    assert result.returncode == 0, result.stderr
    assert "cam.h264 timed at 29.97 fps (its header's" in result.stderr
    got = facts(out)
    assert (got.width, got.height) == (128, 96)
    assert [p * got.time_base for p in got.pts] == [Fraction(1001 * n, 30000) for n in range(8)]
    assert not (tmp_path / ".cam.mp4.carn-stream").exists()  # the timed copy went with the work
    folder = tmp_path / "outs"
    result = run_cli("upscale", str(inputs), str(folder), "--input-fps", "25", *common)
    assert result.returncode == 0, result.stderr
    got = facts(folder / "cam.mp4")
    assert [p * got.time_base for p in got.pts] == [Fraction(n, 25) for n in range(8)]
    bad = run_cli("upscale", str(raw), str(out), "--input-fps", "0", *common)
    assert bad.returncode == 2 and "out of range" in bad.stderr


def test_upscale_to_hls_folder(tiny_clip, weights_path, tmp_path):
    out = tmp_path / "hls"
    result = run_cli(
        "upscale",
        str(tiny_clip),
        str(out),
        "--scale",
        "2",
        "--weights",
        str(weights_path),
        "--format",
        "hls",
        "--tile",
        "20",
    )
    assert result.returncode == 0, result.stderr
    assert (out / "index.m3u8").read_text().rstrip().endswith("#EXT-X-ENDLIST")


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--preset", "p7"], "preset 'p7' does not apply to h264"),
        (["--crf", "70"], "crf must be between 0 and 51"),
        (["--device", "cuda"], "CUDA"),
        (["--format", "hls", "--segment-seconds", "0.5"], "at least 1 second"),
        (["--format", "hls", "--segment-seconds", "0"], "at least 1 second, got 0"),  # was 4 s
        (["--format", "hls", "--segment-seconds", "nan"], "got nan"),  # was cut every 30 frames
        (["--format", "hls", "--segment-seconds", "inf"], "got inf"),
    ],
)
def test_upscale_refuses_bad_options_without_output(
    tiny_clip, weights_path, tmp_path, extra, message
):
    out = tmp_path / "o.mp4"
    result = run_cli(
        "upscale", str(tiny_clip), str(out), "--scale", "2", "--weights", str(weights_path), *extra
    )
    assert result.returncode == 1 and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".o.mp4*"))


def test_outputs_that_are_folders_are_refused_before_any_work(tiny_clip, weights_path, tmp_path):
    image = tmp_path / "in.png"
    write_png(image, np.zeros((8, 8, 3), np.uint8))
    folder_png, folder_pth = tmp_path / "dir.png", tmp_path / "dir.pth"
    folder_png.mkdir()
    folder_pth.mkdir()
    weights = ["--weights", str(weights_path)]
    # Was "[Errno 21] Is a directory: '.dir.png.part' -> 'dir.png'", the .part file left behind.
    result = run_cli("upscale-image", str(image), str(folder_png), "--scale", "2", "--overwrite",
                     *weights)  # fmt: skip
    assert result.returncode == 1 and f"output {folder_png} is a folder" in result.stderr
    # Was found out by torch.save once the training had run.
    result = run_cli("tune", str(tiny_clip), str(folder_pth), "--scale", "2", *weights)
    assert result.returncode == 1 and f"output {folder_pth} is a folder" in result.stderr
    assert not list(tmp_path.glob(".*")) and not any(folder_png.iterdir())


def test_upscale_says_an_output_folder_it_cannot_write_into(tiny_clip, weights_path, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("kept")
    cases = {
        a_file / "o.mp4": f"cannot write {a_file / 'o.mp4'}: {a_file} is a file, not a folder",
        # was "[Errno 2] No such file or directory: '/proc/.o.mp4.carn-stream'", the work folder
        Path("/proc/o.mp4"): "cannot write into the output folder /proc: ",
    }
    for out, message in cases.items():
        result = run_cli("upscale", str(tiny_clip), str(out), "--scale", "2",
                         "--weights", str(weights_path))  # fmt: skip
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert a_file.read_text() == "kept"


@pytest.mark.parametrize("kind", ["missing", "text", "audio_only"])
def test_upscale_bad_input_exits_1_with_one_line(kind, data_dir, weights_path, tmp_path):
    from tests.media import write_audio_only

    src = tmp_path / "in.mp4"
    if kind == "text":
        src.write_text("hello")
    elif kind == "audio_only":
        write_audio_only(data_dir / "video" / "bigbuckbunny.mp4", src)
    out = tmp_path / "out.mp4"
    result = run_cli("upscale", str(src), str(out), "--scale", "2", "--weights", str(weights_path))
    expected = {
        "missing": "no such file",
        "text": "not a video file",
        "audio_only": "no video stream",
    }[kind]
    assert result.returncode == 1 and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.mp4*"))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/clip.mp4", "https://127.0.0.1:9/a/clip.mp4?x=1", "file:///c.mp4"]
)
def test_upscale_refuses_a_url_as_typed(url, tmp_path):
    out = tmp_path / "out.mp4"
    result = run_cli("upscale", url, str(out), "--scale", "2")
    # Was "http:/127.0.0.1:9/clip.mp4: no such file" (a path with one slash lost).
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"carn-stream upscale: error: {url}: upscale reads local files, not URLs; download it "
        "first, or give the URL to the service (carn-stream serve, POST /jobs)"
    )
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "variable,value,allowed",
    [
        ("CARN_STREAM_DEVICE", "gpu", "auto, cpu, cuda or cuda:N"),
        ("CARN_STREAM_PRECISION", "fp8", "auto, fp32"),
        ("CARN_STREAM_EXECUTOR", "threads", "process, inprocess"),
        ("CARN_STREAM_SEGMENT_SECONDS", "0.5", "at least 1"),
        ("CARN_STREAM_MAX_CONCURRENT_JOBS", "many", "must be a whole number, 1 or more"),
        ("CARN_STREAM_PORT", "eighty", "must be a port number (1-65535"),
        ("CARN_STREAM_PORT", "70000", "must be a port number (1-65535"),
        ("CARN_STREAM_LIVE_STUN_SERVER", "turn:relay.example", "stun:HOST or stun:HOST:PORT"),
        ("CARN_STREAM_LIVE_STUN_SERVER", "stun:relay.example:0", "stun:HOST or stun:HOST:PORT"),
        ("CARN_STREAM_CORS_ORIGINS", "https://app.example/", "without a path, or '*'"),
        ("CARN_STREAM_CORS_ORIGINS", "*,app.example", "each scheme://host[:port]"),
        ("CARN_STREAM_LIVE_ICE_HOSTS", "127.0.0.1,localhost", "IP addresses of this machine"),
        # (only bound, to learn it is not this machine's: nothing is sent)
        ("CARN_STREAM_LIVE_ICE_HOSTS", "192.0.2.1", "192.0.2.1 is not an address of this"),
    ],
)
def test_serve_refuses_a_bad_setting_at_once_naming_it(variable, value, allowed, tmp_path):
    result = run_cli("serve", "--port", "0", "--data-dir", str(tmp_path), env={variable: value})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and allowed in lines[0], result.stderr
    assert not (tmp_path / "jobs.sqlite3").exists()  # nothing started


def test_a_bad_option_is_named_as_the_user_gave_it(tmp_path):
    """A bad --device was refused as if the variable CARN_STREAM_DEVICE were wrong."""
    result = run_cli("serve", "--port", "0", "--data-dir", str(tmp_path), "--device", "gpu")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "carn-stream serve: error: --device must be auto, cpu, cuda or cuda:N; got 'gpu'"
    )


def test_every_numeric_setting_names_itself_and_what_it_takes():
    from dataclasses import fields

    from carn_stream.settings import Settings, SettingsError

    numeric = [f.name for f in fields(Settings) if f.type in ("int", "float")]
    assert len(numeric) >= 29  # 29 today, each one checked
    for name in numeric:
        variable = f"CARN_STREAM_{name.upper()}"
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({variable: "eighty"})
        message = str(caught.value)  # was: invalid literal for int() with base 10: 'eighty'
        assert message.startswith(f"{variable} must be ") and message.endswith("; got 'eighty'")
        assert "number" in message and "literal" not in message, message
    for name in (f.name for f in fields(Settings) if f.type == "float"):
        for value in ("nan", "inf"):  # "inf" seconds of segment made one segment of a film
            with pytest.raises(SettingsError, match=f"got '{value}'"):
                Settings.from_env({f"CARN_STREAM_{name.upper()}": value})


def _listener(host: str, port: int = 0):
    """A socket listening as a server would (uvicorn sets SO_REUSEADDR)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen()
    return sock


def test_serve_says_a_busy_port_at_once_before_loading_anything(tmp_path):
    with _listener("127.0.0.1") as busy:
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = run_cli("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"))
        took = time.monotonic() - started
    # Was: the model loaded (6 s), then uvicorn's "[Errno 98]" line, exit 3 and a stray
    # "worker process ... ready" line.
    assert result.returncode == 1
    assert result.stderr == (
        f"carn-stream serve: error: port {port} is in use on 127.0.0.1; pass --port "
        "(or set CARN_STREAM_PORT)\n"
    )
    assert took < 3, took  # measured 0.3 s: no torch, no model
    assert not (tmp_path / "data").exists()


def test_serve_says_an_unusable_data_folder_in_one_line(tmp_path):
    a_file = tmp_path / "data"
    a_file.write_text("not a folder")
    port = str(_free_port())
    # Was: uvicorn's start-up traceback (FileExistsError) and exit 3.
    result = run_cli("serve", "--port", port, "--data-dir", str(a_file))
    assert (result.returncode, result.stderr) == (
        1,
        f"carn-stream serve: error: data folder {a_file} is not a folder; pass --data-dir\n",
    )
    result = run_cli("serve", "--port", port, "--data-dir", str(a_file / "below"))
    assert (result.returncode, result.stderr) == (
        1,
        f"carn-stream serve: error: cannot make the data folder {a_file / 'below'}: "
        "Not a directory\n",
    )
    assert a_file.read_text() == "not a folder"


def _free_port() -> int:
    with _listener("127.0.0.1") as sock:
        return sock.getsockname()[1]


@pytest.mark.parametrize("port", ["eighty", "-1", "70000"])
def test_serve_port_flag_takes_port_numbers_only(port):
    result = run_cli("serve", "--port", port)
    assert result.returncode == 2  # a usage error, before anything starts
    assert result.stderr.strip().endswith(
        f"argument --port: expected a port number (1-65535; 0 picks a free one), got '{port}'"
    )


def test_the_port_check_binds_as_uvicorn_will():
    import socket

    from carn_stream.listening import ListenError, check_listen

    with _listener("127.0.0.1") as busy:
        port = busy.getsockname()[1]
        for host in ("127.0.0.1", "0.0.0.0", ""):  # the wildcard takes 127.0.0.1 too
            with pytest.raises(ListenError, match=f"port {port} is in use"):
                check_listen(host, port)
        check_listen("::1", port)  # IPv6 sockets are IPv6-only, as asyncio makes them
        check_listen("127.0.0.1", 0)  # any free port: nothing to check
    with _listener("::1") as busy6, pytest.raises(ListenError, match="is in use on ::1"):
        check_listen("::1", busy6.getsockname()[1])
    # A port whose last connection is in TIME_WAIT can be listened on again (SO_REUSEADDR):
    # the check must not refuse a server restarted at once.
    with _listener("127.0.0.1") as server:
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: its end waits in TIME_WAIT
        client.close()
    check_listen("127.0.0.1", port)
    with pytest.raises(ListenError, match="not an address of this machine"):
        check_listen("192.0.2.1", 8000)  # TEST-NET-1: bound locally or not at all


@pytest.fixture()
def slow_clip(data_dir, tmp_path) -> Path:
    """12 frames of Big Buck Bunny at 640x360: at x4 one frame takes seconds on a CPU."""
    from tests.media import decode_rgb, downscale_frames, write_clip

    frames = downscale_frames(decode_rgb(data_dir / "video" / "bigbuckbunny.mp4", 12), (640, 360))
    return write_clip(tmp_path / "slow.mp4", frames)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_upscale_stops_promptly_on_a_signal(signum, slow_clip, weights_path, tmp_path):
    out = tmp_path / "out.mp4"
    command = [sys.executable, "-m", "carn_stream.cli", "upscale", str(slow_clip), str(out)]
    command += ["--scale", "4", "--precision", "fp32", "--weights", str(weights_path)]
    proc = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    first_frame = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "1/12" in line:
                first_frame.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first_frame.wait(120), "".join(lines)
        # The next frame is now in the model: before this fix the process waited for it and
        # the batches queued behind it (14-25 s at 720p), and sometimes aborted (exit 134).
        sent = time.monotonic()
        proc.send_signal(signum)
        code = proc.wait(30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()
    reader.join(5)
    text = "".join(lines)
    assert code == 130, text
    assert took < 2.5, f"took {took:.1f} s to stop"
    # One segment (12 frames), not done: nothing is kept, and a rerun makes again what was made.
    said = re.search(r"stopping: abandoning the segments in progress; no segment is done yet "
                     r"\(0 of 1\), so running the same command again starts from the first "
                     r"frame and makes again the (\d+) frames? of the segments in progress", text)
    assert said and 1 <= int(said[1]) < 12, text
    assert "terminate called" not in text and "Traceback" not in text
    assert not out.exists() and not list(tmp_path.rglob("*.part"))  # nothing half-written


@pytest.mark.parametrize("download", ["disabled", "refused"])
def test_bundled_weights_fallback_is_one_warning_with_the_fix(download, tiny_clip, tmp_path):
    from tests.service import free_port

    cache = tmp_path / "cache"
    env = {"CARN_WEIGHTS": "", "XDG_CACHE_HOME": str(cache), "CARN_STREAM_ALLOW_DOWNLOAD": "0"}
    if download == "refused":  # the first start offline: a download tried, and refused
        url = f"http://127.0.0.1:{free_port()}/carn_m.pth"
        env.update(CARN_STREAM_ALLOW_DOWNLOAD="1", CARN_STREAM_WEIGHTS_URL=url)
    result = run_cli("upscale", str(tiny_clip), str(tmp_path / "up.mp4"), "--scale", "2", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()  # "\r" ends a line here too
    warnings = [line for line in lines if "using the bundled" in line]
    # Was printed twice (once bare by logging's last-resort handler, once prefixed), and
    # glued to the download's progress ("... 0.0 MBcarn-stream: warning: ...").
    assert len(warnings) == 1, result.stderr
    (warning,) = warnings
    assert warning.startswith("carn-stream: warning: using the bundled CARN-M weights")
    reason = "downloading is disabled" if download == "disabled" else "Connection refused"
    assert reason in warning and "37.62 dB" in warning
    progress = [line for line in lines if line.startswith("downloading the official")]
    assert progress == ([] if download == "disabled" else ["downloading the official CARN-M "
                                                          "weights: 0.0 MB"])  # fmt: skip
    for fix in (
        "https://github.com/nmhkahn/CARN-pytorch/raw/master/checkpoint/carn_m.pth",
        "sha256 d48a759a84509351facb6b7c6d5bd6edec98b98519b8c464ee4ab44d2ba964ff",
        "--weights PATH",
        "CARN_WEIGHTS=PATH",
        str(cache / "carn-stream" / "carn_m-d48a759a.pth"),
    ):
        assert fix in warning


def test_a_file_that_is_not_weights_is_named_in_one_line(tiny_clip, tmp_path):
    license_file = Path(__file__).resolve().parents[1] / "LICENSE"
    result = run_cli(
        "upscale",
        str(tiny_clip),
        str(tmp_path / "up.mp4"),
        "--scale",
        "2",
        "--weights",
        str(license_file),
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"carn-stream upscale: error: weights file {license_file} is not a PyTorch checkpoint "
        "(corrupt, or another kind of file); expected a CARN-M state dict of tensors (.pth)"
    )
    assert not (tmp_path / "up.mp4").exists()


def test_a_weights_download_is_announced_before_the_host_answers(tmp_path, caplog):
    import logging
    import socket

    from carn_stream.model.weights import WeightsError, download

    calls: list[tuple[float, int, int | None]] = []
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/carn_m.pth"
        started = time.monotonic()
        caplog.set_level(logging.INFO, logger="carn_stream.model.weights")
        with pytest.raises((OSError, WeightsError)):
            download(
                url,
                "0" * 64,
                tmp_path / "w.pth",
                timeout=1.0,
                progress=lambda done, total: calls.append((time.monotonic(), done, total)),
            )
    assert calls and calls[0][1:] == (0, None) and calls[0][0] - started < 0.5
    (record,) = [r for r in caplog.records if "downloading" in r.getMessage()]
    assert url in record.getMessage() and record.created - (time.time() - 5) > 0
    assert list(tmp_path.iterdir()) == []  # no partial file left


def test_a_work_folder_another_run_is_using_is_refused(tiny_clip, weights_path, tmp_path):
    """The same command started twice "resumed" the first run's live folder, made the same
    segments into the same files, and failed once the first run removed them."""
    from carn_stream.pipeline.execution.workdir import WorkDir

    work = tmp_path / "work"
    held = WorkDir(work).hold()  # (as a run of the command holds it)
    try:
        result = run_cli("upscale", str(tiny_clip), str(tmp_path / "o.mp4"), "--scale", "2",
                         "--weights", str(weights_path), "--work-dir", str(work),
                         "--precision", "fp32")  # fmt: skip
    finally:
        held.close()
    assert result.returncode == 1
    assert f"another run is using the work folder {work} now" in result.stderr, result.stderr
    assert sorted(p.name for p in work.iterdir()) == [".lock"]  # its folder untouched
    assert not (tmp_path / "o.mp4").exists()


def test_a_stop_says_how_many_segments_are_done_and_what_a_rerun_redoes(tmp_path, data_dir):
    from carn_stream.pipeline.media.segments import plan_segments
    from carn_stream.upscale_command import Item, stop_note
    from tests.media import decode_rgb, downscale_frames, write_clip

    # Big Buck Bunny's own GOP: one keyframe; 132 frames in 4 s segments (100 + 32 frames).
    frames = downscale_frames(decode_rgb(data_dir / "video" / "bigbuckbunny.mp4", 132), (64, 36))
    clip = write_clip(tmp_path / "one.mp4", frames, options={"g": "1000", "crf": "20"})
    plan = plan_segments(clip, 4.0)
    item = Item(clip, tmp_path / "out.mp4", None, tmp_path / "work", plan=plan)
    item.made = {0: 55}  # stopped at 55 of 132 frames, none of them in a finished segment
    assert stop_note([item], item.work) == (
        "abandoning the segments in progress; no segment is done yet (0 of 2), so running the "
        "same command again starts from the first frame and makes again the 55 frames of the "
        "segments in progress"
    )
    item.done, item.made = {0}, {1: 1}
    assert stop_note([item], item.work) == (
        f"abandoning the segments in progress; 1 of 2 segments are done and stay in {item.work}: "
        "running the same command again resumes from them and makes again the 1 frame of the "
        "segments in progress"
    )
    # A folder run: one output in its join (finished first), another with segments to make.
    joining = Item(clip, tmp_path / "a.mp4", None, tmp_path / "wa", plan=plan, done={0, 1})
    joining.run = object()
    assert stop_note([joining, item], "each output's work folder") == (
        f"stopping the join of {joining.output}: every segment is done and stays in each "
        "output's work folder, so running the same command again only joins them; abandoning "
        "the segments in progress; 1 of 2 segments are done and stay in each output's work "
        "folder: running the same command again resumes from them and makes again the 1 frame "
        "of the segments in progress"
    )


def test_speed_measures_each_size_and_precision_and_says_what_keeps_up(
    weights_path, data_dir, monkeypatch, capsys
):
    """``carn-stream speed``: frames per second of the engine per input size and precision
    mode, and whether that keeps up with 25 and 30 fps; frames from a video when given one
    (else the pictures the package ships); ``auto`` names the mode it chose."""
    from carn_stream.precisions import NAMES
    from carn_stream.speed_command import Row, table

    monkeypatch.setenv("CARN_WEIGHTS", str(weights_path))
    clip = data_dir / "video" / "carphone_pristine.mp4"
    args = ["speed", str(clip), "--sizes", "48x32,32x24", "--precision", "fp32,auto",
            "--seconds", "0.1", "--json"]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["content"] == "carphone_pristine.mp4" and report["device"] == "cpu"
    rows = report["rows"]
    assert [(r["input"], r["output"], r["precision"]) for r in rows] == [
        ("48x32", "96x64", "fp32"), ("48x32", "96x64", "auto"),
        ("32x24", "64x48", "fp32"), ("32x24", "64x48", "auto"),
    ]  # fmt: skip
    assert all(r["fps"] > 0 and r["runs"] >= 3 and r["ms"] * r["fps"] == pytest.approx(1000)
               for r in rows)  # fmt: skip
    assert rows[0]["chosen"] == "fp32" and rows[1]["chosen"] in NAMES
    assert main(["speed", "--sizes", "24x16", "--precision", "fp32", "--seconds", "0.1"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["input", "output", "precision", "ms/frame", "fps", "25", "fps",
                               "30", "fps"]  # fmt: skip
    assert text[1].split()[:3] == ["24x16", "48x32", "fp32"]
    shown = table([Row("176x144", "352x288", 2, "auto", "ov-bf16", 34.6, 28.9, 10)])
    assert shown.splitlines()[1].split()[2:] == ["auto", "(ov-bf16)", "34.6", "28.9", "yes",
                                                 "no", "(0.96x)"]  # fmt: skip


@pytest.mark.parametrize(
    "args,code,message",
    [(["--sizes", "10"], 2, "expected sizes like"),
     (["--sizes", "4x4"], 2, "expected sizes like"),
     (["--seconds", "0"], 2, "expected seconds"),
     (["--precision", "fast"], 1, "choose from"),
     (["/nowhere/clip.mp4"], 1, "no such file")],
)  # fmt: skip
def test_speed_refuses_bad_requests_in_one_line(args, code, message, weights_path, monkeypatch,
                                                capsys):  # fmt: skip
    monkeypatch.setenv("CARN_WEIGHTS", str(weights_path))
    with pytest.raises(SystemExit) if code == 2 else contextlib.nullcontext() as exited:
        result = main(["speed", *args])
    err = capsys.readouterr().err
    assert (exited.value.code if code == 2 else result) == code
    last = err.strip().splitlines()[-1]  # a usage error (2) follows argparse's usage lines
    assert message in last and (code == 2 or len(err.strip().splitlines()) == 1), err


# --------------------------------------------------------------------------- work folders


def test_a_work_folder_holding_other_files_is_refused_and_left_as_it_was(data_dir, tmp_path):
    """`--work-dir` named a folder the run emptied when it began and deleted when it ended:
    a user's folder given as the work folder lost everything in it (the output too)."""
    work = tmp_path / "mine"
    (work / "photos").mkdir(parents=True)
    (work / "notes.txt").write_text("keep me")
    clip = data_dir / "video" / "carphone_pristine.mp4"
    for out, said in ((tmp_path / "out.mp4", "holds files that are not a run's (notes.txt, "
                       "photos)"), (work / "out.mp4", "holds out.mp4; name a folder of its own")):
        done = run_cli("upscale", str(clip), str(out), "--scale", "2", "--precision", "fp32",
                       "--work-dir", str(work))  # fmt: skip
        assert done.returncode == 1 and f"{work} {said}" in done.stderr, done.stderr
        assert sorted(p.name for p in work.iterdir()) == ["notes.txt", "photos"]


def test_a_work_folder_removes_only_what_runs_write(tmp_path):
    from carn_stream.pipeline.execution.workdir import ForeignWorkDir, WorkDir

    work = WorkDir(tmp_path / "work")
    written = ["plan.json", "segments.jsonl", "input.joined", ".input.joined.apart.json",
               ".input.joined.audio0", ".plan.json.part", "input.mp4"]  # fmt: skip
    work.path.mkdir()
    (work.path / "segments").mkdir()
    (work.path / "segments" / "segment_00000.ts").write_bytes(b"x")
    for name in written:
        (work.path / name).write_bytes(b"x")
    work.check_own()  # a run's folder: taken
    with pytest.raises(ForeignWorkDir, match=r"holds input\.mp4; name a folder of its own"):
        work.check_own(work.path / "input.mp4")  # the input itself lies there
    users = ["out.mp4", ".plan.json.backup", ".input.mp4.swp"]
    for name in users:
        (work.path / name).write_bytes(b"the user's")
    with pytest.raises(ForeignWorkDir, match=r"holds files that are not a run's \(\.input"):
        work.check_own()
    work.remove()
    assert sorted(p.name for p in work.path.iterdir()) == sorted(users)
    for name in users:
        (work.path / name).unlink()
    work.remove()
    assert not work.path.exists()  # emptied: gone


def test_an_output_name_too_long_for_a_work_folder_name_gets_a_digest(tmp_path):
    from carn_stream.upscale_command import NAME_MAX, default_work_dir

    long, other = tmp_path / ("v" * 246 + ".mkv"), tmp_path / ("v" * 245 + ".mkv")
    works = [default_work_dir(p) for p in (long, other)]
    assert all(len(os.fsencode(w.name)) <= NAME_MAX for w in works)
    assert works[0] != works[1] and works[0].parent == tmp_path
    short = tmp_path / "clip.mp4"
    assert default_work_dir(short).name == ".clip.mp4.carn-stream"
    assert default_work_dir(short, tmp_path / "w") == tmp_path / "w" / ".clip.mp4.carn-stream"


def test_a_folder_run_fails_an_interrupted_output_it_cannot_resume(tmp_path):
    """An HLS output a folder run left half made, rerun with other options, was "skipped
    (exists)": never finished, and said to be fine."""
    from carn_stream.pipeline.media.formats import FORMATS
    from carn_stream.upscale_command import Item, _claim, default_work_dir

    output = tmp_path / "out" / "clip"
    output.mkdir(parents=True)
    (output / "index.m3u8").write_text("#EXTM3U\n#EXT-X-PLAYLIST-TYPE:EVENT\n")
    (output / "segment_00000.ts").write_bytes(b"\x47" * 188)
    item = Item(tmp_path / "clip.mp4", output, FORMATS["hls"], default_work_dir(output))
    _claim(item, overwrite=False, skip_existing=True)
    assert item.result == "skipped (exists)"  # no work folder: someone's finished output
    item.work.mkdir()
    (item.work / "plan.json").write_text("{}")  # an interrupted run's, of other options
    item.result = "pending"
    _claim(item, overwrite=False, skip_existing=True)
    assert item.result.startswith("failed: ") and "--overwrite makes it again" in item.result
