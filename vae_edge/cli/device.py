"""The on-device commands: numpy + onnxruntime only (sample, reconstruct, interpolate,
denoise, score, encode, decode, info)."""

from __future__ import annotations

import json

import click

from vae_edge import VaeEdgeError
from vae_edge.cli.base import (
    _labels_for,
    data_dir_option,
    digit_option,
    done,
    eight_bit_likelihoods,
    expect_option,
    json_option,
    positive,
    seed_option,
    trust_first,
    trusted_key_option,
    warner,
    with_runtime,
)


@click.command()
@click.option("-n", "n", type=int, default=64, show_default=True, help="How many images.")
@digit_option("Which digit to draw (conditional models only; default: 0-9 in turn).")
@seed_option
@click.option("-o", "--output", required=True, type=click.Path(), help="PNG grid (or .npy of images).")
@with_runtime
def sample(rt, n, digit, seed, output) -> None:
    """Generate new digits from the prior, as a grid image.

    \b
    Example: vae-edge sample -n 64 -o samples.png
             vae-edge sample -n 16 --digit 7 --bundle bundles/my-conditional-model -o sevens.png
             (--digit needs a conditional model: train one with `vae-edge train --conditional`)
    """

    from vae_edge.runtime.images import (
        PICTURE_OR_ARRAY,
        check_grid_size,
        check_output,
        grid,
        save_picture_or_array,
        wants_array,
    )

    out = check_output(output, PICTURE_OR_ARRAY)
    if not wants_array(out):
        check_grid_size(n)  # before any work
    images = rt.sample(n, seed=seed, digit=digit)
    save_picture_or_array(out, images, lambda: grid(images))
    done(f"{n} samples -> {out}", out)


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(), help="Output image (.png, .jpg): a grid; or .npy: the array.")
@digit_option()
@data_dir_option
@with_runtime
def reconstruct(rt, inputs, output, digit, data_dir) -> None:
    """Encode and decode images: originals on the top row, reconstructions below.

    \b
    Example: vae-edge reconstruct "mnist:test[0:16]" -o recon.png
             vae-edge reconstruct my_digit.png -o recon.png
    """
    import numpy as np

    from vae_edge.runtime.images import (
        PICTURE_OR_ARRAY,
        check_output,
        grid,
        has_ink,
        load_inputs,
        save_picture_or_array,
    )

    out = check_output(output, PICTURE_OR_ARRAY)
    x, labels = load_inputs(inputs, data_dir, shape=rt.image_shape, any_size=rt.spatial)
    rec = rt.reconstruct(x, _labels_for(rt, labels, digit))
    save_picture_or_array(out, rec, lambda: grid(np.concatenate([x, rec]), ncol=len(x)))
    done(f"{len(x)} reconstruction{'s' if len(x) != 1 else ''} -> {out}", out)
    blank = sum(not has_ink(xi) for xi in x)
    if blank:
        click.echo(f"note: {blank} of the images show no ink (blank?): their reconstruction says little", err=True)


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--steps", type=int, default=10, show_default=True, help="Frames from A to B, both included.")
@click.option("--method", type=click.Choice(["lerp", "slerp"]), default="lerp", show_default=True, help="lerp: straight line; slerp: along the sphere (keeps latent norms typical).")
@click.option("-o", "--output", required=True, type=click.Path(), help=".gif (animated) or .png (a strip).")
@data_dir_option
@with_runtime
def interpolate(rt, a, b, steps, method, output, data_dir) -> None:
    """Morph one image into another through the latent space.

    \b
    Example: vae-edge interpolate "mnist:test[0:1]" "mnist:test[1:2]" --steps 10 -o morph.gif
    """
    from vae_edge.runtime.images import (
        check_output,
        grid,
        load_inputs,
        output_format,
        save_gif,
        save_image,
    )

    out = check_output(output, (".gif", ".png"))
    xa, la = load_inputs([a], data_dir, shape=rt.image_shape, any_size=rt.spatial)
    xb, lb = load_inputs([b], data_dir, shape=rt.image_shape, any_size=rt.spatial)
    if len(xa) != 1 or len(xb) != 1:
        raise VaeEdgeError("A and B must each be one image (a file, or a slice like mnist:test[3:4])")
    y = None
    if rt.conditional:
        if la is None or lb is None:
            raise VaeEdgeError("this model is conditional: use dataset slices (they carry labels)")
        import numpy as np
        y = np.concatenate([la, lb])
    frames = rt.interpolate(xa[0], xb[0], steps=steps, method=method, y=y)
    if output_format(out, (".gif", ".png")) == ".gif":
        save_gif(frames, out)
    else:
        save_image(grid(frames, ncol=steps), out)
    done(f"{steps} frames -> {out}", out)


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--noise", default="gaussian:0.3", show_default=True,
              help="What corrupted the inputs: gaussian:SIGMA or saltpepper:FRACTION; with --demo also "
                   "mask:rect|top|bottom|left|right (inpainting).")
@click.option("--demo", is_flag=True,
              help="Corrupt clean inputs with --noise first, then restore them (rows: clean, corrupted, restored). "
                   "Without it the inputs are already noisy and are restored as they are.")
@click.option("--samples", type=int, default=512, show_default=True, callback=positive("samples"),
              help="Particles per image (sequential Monte Carlo).")
@click.option("--rounds", type=int, default=2, show_default=True, callback=positive("rounds"),
              help="Metropolis moves per temperature step.")
@seed_option
@digit_option()
@click.option("-o", "--output", required=True, type=click.Path(),
              help="PNG (labelled rows) or .npy (the restored images, [N, 1, 28, 28]).")
@data_dir_option
@json_option
@with_runtime
def denoise(rt, inputs, noise, demo, samples, rounds, seed, digit, output, data_dir, as_json) -> None:
    """Restore noisy images: the model's posterior mean of the clean image.

    INPUTS are already corrupted by --noise (image files at the model's 28x28, taken pixel for
    pixel; .npy arrays; dataset slices). The restoration is E[clean | noisy] under the noise's
    exact likelihood, each pixel's own evidence included, estimated by sequential Monte Carlo
    (tempering from the encoder's posterior, resampling, Metropolis moves). --json reports the
    effective sample size of each image's final weights.

    \b
    Example: vae-edge denoise scan.png --noise saltpepper:0.2 -o restored.png
             vae-edge denoise noisy.npy --noise gaussian:0.3 -o restored.npy
             vae-edge denoise "mnist:test[0:8]" --noise saltpepper:0.2 --demo -o denoised.png
             vae-edge denoise "mnist:test[0:8]" --noise mask:rect --demo -o inpainted.png
    """
    import numpy as np

    from vae_edge.runtime.images import (
        PICTURE_OR_ARRAY,
        check_output,
        labelled_rows,
        load_inputs,
        save_picture_or_array,
    )
    from vae_edge.runtime.vae_runtime import corrupt, parse_noise

    out = check_output(output, PICTURE_OR_ARRAY)
    kind, _ = parse_noise(noise)
    if kind == "mask" and not demo:
        raise VaeEdgeError("mask:... says which pixels are missing only when vae-edge made the hole: add --demo")
    x, labels = load_inputs(inputs, data_dir, as_is=not demo, shape=rt.image_shape)
    noisy, mask = corrupt(x, noise, seed=seed) if demo else (x, None)
    diag: dict = {}
    restored = rt.denoise(noisy, noise=None if mask is not None else noise, mask=mask, samples=samples,
                          rounds=rounds, seed=seed, y=_labels_for(rt, labels, digit), info=diag)
    rows = [("clean", x), ("corrupted", noisy)] if demo else [("input", x)]
    save_picture_or_array(out, restored, lambda: labelled_rows([*rows, ("restored", restored)]))
    mse = lambda a: float(np.mean((a - x) ** 2))  # noqa: E731
    n = len(x)
    if as_json:
        report = {"output": str(out), "noise": noise, "demo": demo, "images": n, **diag}
        if demo:
            report.update(mse_corrupted=mse(noisy), mse_restored=mse(restored))
        click.echo(json.dumps(report), err=str(out) == "-")
        return
    what = (f"MSE to clean: corrupted {mse(noisy):.4f}, restored {mse(restored):.4f}" if demo
            else f"{n} image{'s' if n != 1 else ''} restored")
    done(f"{what} (effective sample size: median {np.median(diag['ess']):.0f} of {samples}) -> {out}", out)


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--iw-samples", type=click.IntRange(0), default=0, show_default=True,
              help="0: -ELBO; K: importance-weighted -log p(x) (K=5000 is the literature's figure).")
@click.option("--elbo-samples", type=click.IntRange(1), default=16, show_default=True,
              help="Draws the -ELBO averages (the same for every image, and as on the browser page).")
@click.option("--complexity", is_flag=True,
              help="Also the complexity-corrected score: -log p(x) of the binarized image minus its compressed "
                   "length (nats); unlike likelihood, it rates blank and trivial images as unusual.")
@seed_option
@digit_option()
@data_dir_option
@json_option
@with_runtime
def score(rt, inputs, iw_samples, elbo_samples, complexity, seed, digit, data_dir, as_json) -> None:
    """Anomaly score of each image in nats (-ELBO or IW -log p(x)): higher is more unusual.

    Likelihood alone is fooled by simple inputs (a blank page scores as the most normal image of
    all): images without ink are flagged, and --complexity adds a score that corrects for it.

    \b
    Example: vae-edge score "mnist:test[0:4]" my_digit.png --json
             vae-edge score blank.png --complexity
    """
    from vae_edge.runtime.images import has_ink

    x, labels, names = load_inputs_with_names(inputs, data_dir, rt.image_shape)
    y = _labels_for(rt, labels, digit)
    scores = rt.score(x, y, iw_samples=iw_samples, seed=seed, elbo_samples=elbo_samples)
    corrected = (rt.complexity_score(x, y, iw_samples=iw_samples, seed=seed, elbo_samples=elbo_samples)
                 if complexity else None)
    inked = [has_ink(xi) for xi in x]
    kind = f"iw_nll_k{iw_samples}" if iw_samples else "neg_elbo"
    bpd = rt.bits_per_dim_8bit(scores) if rt.likelihood in ("gaussian", *eight_bit_likelihoods()) else None
    if as_json:
        rows = []
        for i, (nm, s) in enumerate(zip(names, scores, strict=True)):
            row = {"input": nm, kind: round(float(s), 4), "ink": inked[i]}
            if bpd is not None:
                row["bits_per_dim_8bit"] = round(float(bpd[i]), 4)
            if corrected is not None:
                row["complexity_corrected"] = round(float(corrected[i]), 4)
            rows.append(row)
        click.echo(json.dumps(rows))
        return
    label = f"IW-NLL k={iw_samples}" if iw_samples else "-ELBO"
    click.echo(f"{label:>10}" + (f"  {'corrected':>10}" if corrected is not None else "")
               + (f"  {'bits/dim':>8}" if bpd is not None else "") + "  input (nats)")
    for i, (nm, s) in enumerate(zip(names, scores, strict=True)):
        extra = f"  {corrected[i]:10.2f}" if corrected is not None else ""
        extra += f"  {bpd[i]:8.3f}" if bpd is not None else ""
        click.echo(f"{s:10.2f}{extra}  {nm}" + ("" if inked[i] else "   (no ink found: blank image?)"))
    if not all(inked) and corrected is None:
        click.echo("note: images without ink get low likelihood scores (they look 'normal'); use --complexity",
                   err=True)


def load_inputs_with_names(inputs, data_dir, shape=(1, 28, 28)):
    """(x, labels, one display name per image): each input is loaded once."""
    import numpy as np

    from vae_edge.runtime.images import load_inputs

    xs, ys, names = [], [], []
    for spec in inputs:
        x, y = load_inputs([spec], data_dir, shape=shape)
        xs.append(x)
        ys.append(y)
        names += [spec] if len(x) == 1 and y is None else [f"{spec}#{i}" for i in range(len(x))]
    labels = None if any(y is None for y in ys) else np.concatenate(ys)
    return np.concatenate(xs), labels, names


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(), help=".npy file: mu [N, latent] (and logvar with --with-logvar).")
@click.option("--with-logvar", is_flag=True, help="Save [2, N, latent]: mu and logvar.")
@click.option("--latent-space", type=click.Choice(["model", "raw"]), default="model", show_default=True,
              help="model: the bundle's latents (a diffusers VAE's: the diffusion model's, scaled); raw: unscaled, "
                   "as the VAE's network gives them (z / scaling_factor + shift_factor).")
@digit_option()
@data_dir_option
@with_runtime
def encode(rt, inputs, output, with_logvar, latent_space, digit, data_dir) -> None:
    """Encode images to latent vectors (the posterior mean), saved as .npy.

    \b
    Example: vae-edge encode "mnist:test[0:100]" -o latents.npy
    """
    import numpy as np

    from vae_edge.runtime.images import check_output, load_inputs, save_npy

    out = check_output(output, (".npy",))
    x, labels = load_inputs(inputs, data_dir, shape=rt.image_shape, any_size=rt.spatial)
    mu, logvar = rt.encode(x, _labels_for(rt, labels, digit))
    if latent_space == "raw":
        mu, logvar = rt.to_raw(mu, logvar)
    arr = np.stack([mu, logvar]) if with_logvar else mu
    save_npy(arr, out)
    dims = "x".join(map(str, mu.shape[1:]))
    done(f"{len(x)} latents of {'dim ' if mu.ndim == 2 else 'shape '}{dims} -> {out}", out)


@click.command()
@click.argument("latents", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Output image (.png, .jpg): a grid; or .npy: the array.")
@click.option("--latent-space", type=click.Choice(["model", "raw"]), default="model", show_default=True,
              help="model: the bundle's latents (a diffusers VAE's: a diffusion pipeline's, scaled, which then "
                   "decode as diffusers' vae.decode(z / scaling_factor + shift_factor)); raw: unscaled.")
@digit_option()
@with_runtime
def decode(rt, latents, output, latent_space, digit) -> None:
    """Decode latent vectors from a .npy file into an image grid.

    \b
    Example: vae-edge decode latents.npy -o decoded.png
    """

    from vae_edge.runtime.images import (
        PICTURE_OR_ARRAY,
        check_output,
        grid,
        load_npy,
        save_picture_or_array,
    )

    out = check_output(output, PICTURE_OR_ARRAY)
    z = load_npy(latents, "latents")
    if z.ndim == len(rt.latent_shape) + 2 and z.shape[0] == 2:
        z = z[0]  # [mu, logvar] as written by `encode --with-logvar`
    if latent_space == "raw":
        z = rt.from_raw(z)
    images = rt.decode(z, _labels_for(rt, None, digit) if rt.conditional else None)
    save_picture_or_array(out, images, lambda: grid(images))
    done(f"{len(images)} images -> {out}", out)


@click.command()
@click.option("--bundle", default=None, help="Bundle folder or shipped model name (default: the shipped mlp-mnist).")
@click.option("--variant", default=None, help="Show what `--variant` (e.g. auto) resolves to on this device.")
@trusted_key_option
@expect_option
@json_option
def info(bundle, variant, trusted_key, expect, as_json) -> None:
    """onnxruntime, providers, CPU features for int8, and the bundle's manifest summary.

    \b
    Example: vae-edge info --json
    """
    from vae_edge.runtime.sysinfo import bundle_summary, environment, int8_features_text

    env = environment()
    warn = warner()
    summary = bundle_summary(trust_first(bundle, trusted_key, expect), warn)  # the signature checked once
    if variant is not None:
        from vae_edge.runtime import VAERuntime

        rt = VAERuntime.load(bundle, variant=variant, warn=warn, trusted_key=trusted_key, expect=expect)
        summary["variant"] = {"asked": variant, "loads": rt.variant, "self_check": rt.self_check_diffs}
    if as_json:
        click.echo(json.dumps({"environment": env, "bundle": summary}, indent=2))
        return
    click.echo(f"onnxruntime {env['onnxruntime']}  numpy {env['numpy']}  python {env['python']}")
    click.echo(f"providers available: {', '.join(env['providers_available'])}")
    click.echo(f"cpu: {env['cpu']['model']} ({env['cpu']['cores']} cores, {env['cpu']['arch']})")
    flags = env["cpu"]["int8_features"]
    absent = [k for k, v in flags.items() if not v]
    click.echo(f"cpu features for int8 ({env['cpu']['target']}): "
               + int8_features_text(env["cpu"], none="none detected")
               + (f" (absent: {', '.join(absent)})" if absent else ""))
    click.echo(f"bundle: {summary['path']}  ({summary['name']}, {summary['arch']}, latent {summary['latent_dim']}"
               f"{', conditional' if summary['conditional'] else ''})")
    shape = "x".join(map(str, summary["image_shape"]))
    any_size = summary.get("any_size_multiple_of")
    click.echo(f"  images {shape}" + (f" (its own size; any height and width that are multiples of {any_size})"
                                     if any_size else "")
               + f", latents {'x'.join(map(str, summary['latent_shape']))}, likelihood {summary['likelihood']}")
    for v in summary["variants"]:
        acc = f"  -ELBO {v['neg_elbo_delta']:+.3f} nats vs fp32" if v.get("neg_elbo_delta") is not None else ""
        click.echo(f"  {v['variant']:<13} {v['size_bytes'] / 1e6:6.2f} MB{acc}")
    t = summary.get("tuned")
    tv = summary.get("target_variant")
    click.echo(f"  tuned choice: {t['variant']} on {t['provider']}, {t['threads']} thread(s)" if t
               else f"  tuned choice: none (`--variant auto` means {tv}, recorded for this CPU family; "
                    "`vae-edge tune` chooses by measurement)" if tv
               else "  tuned choice: none (`--variant auto` means fp32; run `vae-edge tune`)")
    click.echo(f"  signature: {summary['signature']}")
    if "variant" in summary:
        v = summary["variant"]
        click.echo(f"  --variant {v['asked']} loads {v['loads']} here (self-check: "
                   f"{'passed' if v['self_check'] is not None else 'no golden vectors'})")


