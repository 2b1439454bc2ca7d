"""`vae-edge compress` and `vae-edge decompress`: lossless bits-back coding of binary images
(a Bernoulli model) and 8-bit ones (a logistic model)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from vae_edge import VaeEdgeError
from vae_edge.cli.base import (
    data_dir_option,
    done,
    eight_bit_likelihoods,
    load_runtime,
    runtime_options,
    seed_option,
)

MAX_FILE_BYTES = 1 << 31


def _read_image_exact(path: Path, shape: tuple[int, int, int]):
    """An image file, pixel for pixel (no framing, no resizing, no inversion): [C, H, W] float32."""
    import numpy as np

    from vae_edge.runtime.images import _open_image

    c, h, w = shape
    with _open_image(path) as img:  # size-checked from the header, one-line errors
        if (img.height, img.width) != (h, w):
            raise VaeEdgeError(f"{path} is {img.width}x{img.height}; compress takes images at the model's "
                               f"{w}x{h}, pixel for pixel")
        a = np.asarray(img.convert("L" if c == 1 else "RGB"))
    a = a[None] if c == 1 else a.transpose(2, 0, 1)
    return (a / 255.0).astype(np.float32)


def load_binary_inputs(specs, shape, data_dir, binarize: str | None, seed: int, eight_bit: bool = False):
    """Inputs of compress -> (float32 [N, C, H, W], layout code of the first array input); 8-bit
    images for a logistic model."""
    import numpy as np

    from vae_edge.data import binarize as stochastic
    from vae_edge.runtime.compress import check_8bit, check_binary, layout_of
    from vae_edge.runtime.images import IMAGE_SUFFIXES, _folder_images, load_inputs, load_npy

    if eight_bit and binarize:
        raise VaeEdgeError("this model codes 8-bit images: --binarize is for binary (Bernoulli) models")
    xs, layout = [], None
    for spec in specs:
        p = Path(spec)
        if spec.lower().endswith(".npy"):
            x, code = layout_of(load_npy(p, "image array"), shape, eight_bit)
            if x.ndim != 4 or x.shape[1:] != tuple(shape):
                raise VaeEdgeError(f"{p} holds an array of shape {list(x.shape)}; images must be "
                                   f"[N, {', '.join(map(str, shape))}]")
            layout = code if layout is None else layout
        elif p.is_dir():
            x = np.stack([_read_image_exact(f, shape) for f in _folder_images(p)])
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            x = _read_image_exact(p, shape)[None]
        else:  # dataset slices and .npz archives
            x, _ = load_inputs([spec], data_dir, shape=shape)
        xs.append(x)
    x = np.concatenate(xs) if xs else np.zeros((0, *shape), np.float32)
    if binarize == "threshold":
        x = (x >= 0.5).astype(np.float32)
    elif binarize == "stochastic":
        x = stochastic(x, seed)
    if eight_bit:
        return check_8bit(x), (layout if layout is not None else 2)  # (not an array: give back uint8)
    return check_binary(x), (layout or 0)


# the shipped compression models (28x28 grey): binary digits, 8-bit digits, 8-bit Fashion-MNIST
BINARY_MODEL, EIGHT_BIT_MODEL, FASHION_MODEL = "mlp-mnist", "conv-mnist8", "conv-fashion8"


def coded_by(variant: str) -> str:
    """What computed a file's probabilities, from the variant its header names: the bundle's
    portable integer network (files that open on any device), or that variant's graphs."""
    from vae_edge.runtime.compress import PORTABLE

    return "portable network (any device)" if variant == PORTABLE else variant


def default_model(inputs, data_dir, binarize: str | None, seed: int) -> tuple[str, tuple | None]:
    """Without --bundle: the shipped binary model for binary images (0/1, 0/255, bool, 1-bit
    files, or --binarize), the shipped 8-bit Fashion-MNIST one for fashion-mnist slices, the 8-bit
    digits one for any other grey image; with an 8-bit model, the inputs as it takes them (read
    once)."""
    import numpy as np

    from vae_edge.runtime.vae_runtime import shipped_bundles

    if binarize:
        return BINARY_MODEL, None
    try:
        loaded = load_binary_inputs(inputs, (1, 28, 28), data_dir, None, seed, eight_bit=True)
    except VaeEdgeError:
        return BINARY_MODEL, None  # not 8-bit images at 28x28: the binary model's loader says what is wrong
    levels = np.unique(loaded[0])
    if set(levels.tolist()) <= {0.0, 1.0} or np.all(levels <= np.float32(1 / 255)):
        return BINARY_MODEL, None
    fashion = all(str(s).lower().startswith("fashion-mnist:") for s in inputs)
    return (FASHION_MODEL if fashion and FASHION_MODEL in shipped_bundles() else EIGHT_BIT_MODEL), loaded


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(), help="The compressed file (e.g. digits.vaez; - for stdout).")
@click.option("--binarize", type=click.Choice(["threshold", "stochastic"]), default=None,
              help="Make grey images binary first: threshold at 0.5, or one Bernoulli draw per pixel (--seed).")
@click.option("--codec", type=click.Choice(["auto", "vae"]), default="auto", show_default=True,
              help="auto: the smallest of the VAE's file and PNG / WebP lossless of the same images (a lone image "
                   "can cost less as a PNG); vae: the VAE's file always.")
@click.option("--float-graphs", is_flag=True,
              help="Code with the variant's float graphs, not the bundle's portable integer network: faster (the "
                   "conv models' network is the coder's main cost), but the file opens only on the same kind of device.")
@seed_option
@data_dir_option
@runtime_options
def compress(inputs, output, binarize, codec, float_graphs, seed, data_dir, **kw) -> None:
    """Compress images losslessly with the model (bits-back coding with ANS).

    A binary (Bernoulli) model takes binary images: .npy arrays (float or uint8 0/1, uint8 0/255,
    bool), 1-bit or black-and-white image files at the model's size (taken pixel for pixel),
    folders of them, or dataset slices with --binarize. An 8-bit (logistic) model takes 8-bit
    images: uint8 arrays, grey or colour PNGs, folders, dataset slices. Without --bundle, binary
    images go to the shipped mlp-mnist, 8-bit ones to the shipped conv-mnist8 (conv-fashion8 for
    fashion-mnist slices). The file records the bundle and the variant: a bundle with a portable
    integer network (every shipped compression model, and every new export of an unconditional
    model) makes files that decompress exactly on any device; otherwise only on the same kind of
    device (docs/compression.md). The images are also coded as PNG and WebP lossless, and the
    smallest file is kept (--codec vae: the VAE's always); the rates are printed.

    \b
    Example: vae-edge compress "mnist:test[0:1000]" -o digits.vaez          (8-bit: conv-mnist8)
             vae-edge compress "mnist:test[0:1000]" --binarize stochastic -o bits.vaez
             vae-edge decompress digits.vaez -o digits.npy
    """
    from vae_edge.runtime.classic import NAMES
    from vae_edge.runtime.compress import compress_best, read_header
    from vae_edge.runtime.files import check_output_path, is_stdout, write_output

    out = Path(output)
    if not is_stdout(out):
        check_output_path(out)
    loaded = None  # the inputs, when choosing the default model read them as that model takes them
    if kw["bundle"] is None:
        kw["bundle"], loaded = default_model(inputs, data_dir, binarize, seed)
    rt = load_runtime(kw)
    x, layout = loaded or load_binary_inputs(inputs, rt.image_shape, data_dir, binarize, seed,
                                             rt.likelihood in eight_bit_likelihoods())
    data, report = compress_best(rt, x, layout, () if codec == "vae" else ("png", "webp"),
                                 portable=not float_graphs)
    write_output(out, lambda tmp: Path(tmp).write_bytes(data))
    rates = report["bits_per_value"]
    chosen = report["chosen"]
    label = f"{rt.info.name} {coded_by(read_header(data)[0]['variant'])}" if chosen == "vae-edge" else NAMES[chosen]
    others = ", ".join(f"{NAMES.get(k.split()[0], k)}{' (est.)' if 'est.' in k else ''} {v:.4f}"
                       for k, v in rates.items() if k.split()[0] != chosen)
    done(f"{len(x)} image{'s' if len(x) != 1 else ''} -> {out}: {len(data):,} bytes, {rates[chosen]:.4f} bits per "
         f"value, coded with {label}" + (f" (also measured: {others})" if others else ""), out)


def read_compressed(path: Path) -> bytes:
    """The file's bytes: a regular file of at most 2 GiB (never blocks on a FIFO)."""
    from vae_edge.runtime.files import read_regular

    return read_regular(path, "compressed file", MAX_FILE_BYTES)


def check_output_folder(out: Path) -> None:
    """A folder output (-o DIR/) that can be written: checked before any decoding."""
    if out.exists() and not out.is_dir():
        raise VaeEdgeError(f"output {out} is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise VaeEdgeError(f"output folder {out} is not empty")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise VaeEdgeError(f"the folder of output {out} does not exist (only the last level is created)")
    if not os.access(parent, os.W_OK):
        raise VaeEdgeError(f"cannot write output {out}: its folder is not writable")


def save_decompressed(out: Path, x, layout: int, folder: bool, eight_bit: bool = False) -> None:
    """.npy: the array as compress was given it; .png: one image; a folder (ending in /): one
    PNG per image (1-bit, or 8-bit grey or colour), all written before the folder appears."""
    import shutil
    import tempfile

    import numpy as np
    from PIL import Image

    from vae_edge.runtime.compress import restore_layout
    from vae_edge.runtime.images import save_image, save_npy

    def picture(img):
        a = np.rint(img * 255).astype(np.uint8)
        grey = "L" if eight_bit else "1"
        return Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).convert(grey if a.shape[0] == 1 else "RGB")

    if folder:
        if out.exists() and any(out.iterdir()):
            raise VaeEdgeError(f"output folder {out} is not empty")
        tmp = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}."))
        try:
            for i, img in enumerate(x):
                picture(img).save(tmp / f"{i:05d}.png")
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    elif out.suffix.lower() == ".npy" or str(out) == "-":
        save_npy(restore_layout(x, layout), out)
    elif len(x) == 1:
        save_image(picture(x[0]), out, ".png")
    else:
        raise VaeEdgeError(f"the file holds {len(x)} images: write them to a .npy or a folder (a path ending in /)")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(),
              help=".npy (the array compress was given), .png (one image), or a folder ending in / (one PNG each).")
@runtime_options
def decompress(file, output, **kw) -> None:
    """Give back exactly the images a file from `vae-edge compress` holds.

    The bundle and variant default to those the file names (a shipped bundle is found by its
    name; pass --bundle for your own). A damaged file, another model or variant, or a device that
    computes the model's floats differently is refused in one line, and nothing is written.

    \b
    Example: vae-edge decompress digits.vaez -o digits.npy
             vae-edge decompress digit.vaez -o digit.png
    """
    from vae_edge.runtime import classic, shipped_bundles
    from vae_edge.runtime.compress import decompress as decode
    from vae_edge.runtime.compress import read_header
    from vae_edge.runtime.files import check_output_path, is_stdout
    from vae_edge.runtime.images import PICTURE_OR_ARRAY

    out = Path(output)
    folder = str(output).endswith(os.sep) or out.is_dir()
    if folder:
        check_output_folder(out)
    elif not is_stdout(out):
        if out.suffix.lower() not in PICTURE_OR_ARRAY:
            raise VaeEdgeError(f"output {out} must end in .npy or .png, or be a folder ending in /")
        check_output_path(out)
    data = read_compressed(Path(file))
    if classic.is_classic(data):  # PNG or WebP inside: no model needed
        from vae_edge.runtime.compress import decompress_classic

        header, x = decompress_classic(data, file)
        save_decompressed(out, x, header["layout"], folder, not header["binary"])
        done(f"{len(x)} image{'s' if len(x) != 1 else ''} -> {out} (exact; {classic.NAMES[header['codec']]})", out)
        return
    header, _, _ = read_header(data, file)
    ctx = click.get_current_context()
    if ctx.get_parameter_source("variant") == click.core.ParameterSource.DEFAULT:
        kw["variant"] = "fp32" if header["variant"] == "portable" else header["variant"]  # portable: any variant
    if kw["bundle"] is None:
        if header["name"] not in shipped_bundles():
            raise VaeEdgeError(f"{file} was made with bundle {header['name'] or '(unnamed)'}, which is not shipped: "
                               "pass --bundle PATH")
        kw["bundle"] = header["name"]
    rt = load_runtime(kw)
    x = decode(rt, data, file)
    save_decompressed(out, x, header["layout"], folder, rt.likelihood in eight_bit_likelihoods())
    done(f"{len(x)} image{'s' if len(x) != 1 else ''} -> {out} (exact; {rt.info.name} {coded_by(header['variant'])})", out)
