"""The click group, its error handling, and the options that several command groups share."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from vae_edge import VaeEdgeError, __version__, install_hint, printable


class _Group(click.Group):
    """Turns errors a user can cause into one line and a non-zero exit (traceback with --debug)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:  # bad option or argument: one line, not usage + hint + error
            where = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
            click.echo(f"Error: {printable(e.format_message())}{where}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"Error: {printable(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except VaeEdgeError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {printable(e)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `vae-edge info | head -1`: the reader left; not an error
            _quiet_stdout()
            ctx.exit(0)
        except ImportError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            missing = getattr(e, "name", None) or str(e)
            shadow = _shadowing_source_tree(missing)
            if shadow is not None:
                click.echo(f"Error: vae_edge was imported from the source folder {shadow} (the current directory "
                           "comes first on Python's path and hides the installed package), where "
                           f"{missing} is not importable: run from another folder, or `pip install -e .` here",
                           err=True)
                ctx.exit(1)
            click.echo(f"Error: this command needs {printable(missing, 100)}, which is not installed: "
                       f"{install_hint(missing)}", err=True)
            ctx.exit(1)
        except Exception as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {type(e).__name__}: {printable(e)} (run `vae-edge --debug ...` for the traceback)",
                       err=True)
            ctx.exit(2)


class _Notes(logging.Handler):
    """The library's log records (logging.getLogger("vae_edge...")) as plain lines on stderr, each
    distinct line once per command (a note repeated by every variant loaded is said once)."""

    def __init__(self, level: int):
        super().__init__(level)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = printable(record.getMessage(), newlines=True)
        if message not in self.seen:
            self.seen.add(message)
            click.echo(message, err=True)


def setup_logging(verbosity: int) -> None:
    """-q: warnings and notes only; default: progress too; -v: debug (onnxruntime's calibration
    output, every file hashed...). Handlers are the CLI's: library modules only log."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    log = logging.getLogger("vae_edge")
    for h in [h for h in log.handlers if isinstance(h, _Notes)]:
        log.removeHandler(h)
    log.addHandler(_Notes(level))
    log.setLevel(level)
    log.propagate = False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vae-edge")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-v", "--verbose", is_flag=True, help="Also debug messages (on stderr).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr, no progress messages.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool, quiet: bool) -> None:
    """vae-edge: train a VAE on MNIST, export it to ONNX, quantize it, run it on the edge.

    \b
    Main job on the shipped model:   vae-edge pipeline --out pipeline-out
    Generate digits, no torch needed: vae-edge sample -n 64 -o samples.png
    Less or more on stderr:           vae-edge -q quantize ...   /   vae-edge -v quantize ...
    """
    if verbose and quiet:
        raise click.UsageError("-v and -q: choose one")
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    setup_logging(1 if verbose else -1 if quiet else 0)


def _shadowing_source_tree(missing: str):
    """The repository root, when `vae_edge` was imported from a source checkout whose subpackages
    (runtime/, export/ beside vae_edge/) only an editable install maps; else None."""
    import vae_edge

    if not missing.startswith("vae_edge."):
        return None
    root = Path(vae_edge.__file__).resolve().parent.parent
    if (root / "runtime").is_dir() and (root / "export").is_dir() and (root / "pyproject.toml").is_file():
        return root
    return None


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that Python's exit flush does not raise again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main() -> None:
    cli(prog_name="vae-edge")


# --------------------------------------------------------------------------------------------
# Shared options, defined once
# --------------------------------------------------------------------------------------------

def dataset_option(f):
    return click.option(
        "--dataset", default="mnist", show_default=True,
        type=click.Choice(["mnist", "fashion-mnist"]), help="Which MNIST-format dataset.",
    )(f)


def data_dir_option(f):
    return click.option(
        "--data-dir", type=click.Path(file_okay=False), default=None,
        help="Folder with the four IDX files (else $VAE_EDGE_DATA, the user cache, a download).",
    )(f)


def seed_option(f):
    return click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
                        help="Seed of the sampled noise, >= 0 (same seed, same result).")(f)


def digit_option(help: str = "Digit of the images, for conditional models (dataset slices carry their own; "
                               "image files and .npy arrays need it)."):
    return click.option("--digit", type=click.IntRange(0, 9), default=None, help=help)


def done(message: str, out) -> None:
    """The closing line of a command that wrote `out`: on stderr when the output went to stdout."""
    click.echo(printable(message, newlines=True), err=str(out) == "-")


def warner():
    """A warn() for library calls: a warning of the vae_edge logger (each distinct note printed
    once per command, on stderr, by the CLI's handler)."""
    return logging.getLogger("vae_edge.cli").warning


def progress_log():
    """A log() for library calls: progress at info level (silenced by -q)."""
    return logging.getLogger("vae_edge.cli").info


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


def positive(name: str):
    def check(ctx, param, value):
        if value is not None and value <= 0:
            raise click.BadParameter(f"must be positive, got {value}")
        return value
    return check



# --------------------------------------------------------------------------------------------
# On-device commands (numpy + onnxruntime only)
# --------------------------------------------------------------------------------------------

trusted_key_option = click.option(
    "--trusted-key", type=click.Path(dir_okay=False), default=None, envvar="VAE_EDGE_TRUSTED_KEY",
    help="PEM public key: refuse a bundle that is not signed by it ($VAE_EDGE_TRUSTED_KEY).")
expect_option = click.option(
    "--expect", default=None, envvar="VAE_EDGE_EXPECT", metavar="NAME[@RELEASE]",
    help="Refuse any bundle but this model at this release or newer (needs a verified signature; stops a "
         "signed older release from replacing a newer one) ($VAE_EDGE_EXPECT).")


def trust_first(bundle, trusted_key, expect=None):
    """For commands that open a bundle many times (bench, tune, info): check its signature once
    up front (one line and exit 1 if it fails), and, until the command ends, make every later load
    require the same key ($VAE_EDGE_TRUSTED_KEY, restored when the command closes)."""
    import os

    from vae_edge.runtime import trust
    from vae_edge.runtime.bundle import open_bundle
    from vae_edge.runtime.vae_runtime import is_shipped, resolve_bundle

    path = resolve_bundle(bundle)
    key, label = trust.resolve_key(trusted_key, shipped=is_shipped(path))
    opened = open_bundle(path, key, warn=warner(), key_label=label, expect=expect)
    if trusted_key:
        old = os.environ.get(trust.ENV_KEY)
        os.environ[trust.ENV_KEY] = str(trusted_key)

        def restore() -> None:
            if old is None:
                os.environ.pop(trust.ENV_KEY, None)
            else:
                os.environ[trust.ENV_KEY] = old
        click.get_current_context().call_on_close(restore)
    return opened


def runtime_options(f):
    """--bundle/--variant/--provider/--provider-option/--threads/--strict, defined once."""
    opts = [
        click.option("--bundle", default=None, help="Bundle folder or shipped model name (default: the shipped mlp-mnist)."),
        click.option("--variant", default="fp32", show_default=True,
                     help="fp32, int8-dynamic, int8-static, fp16, or auto (the tuned choice)."),
        click.option("--provider", "providers", multiple=True,
                     help="Execution provider, by preference: cpu, cuda, tensorrt, openvino, coreml, xnnpack, qnn, dml."),
        click.option("--provider-option", "provider_options", multiple=True, metavar="KEY=VALUE",
                     help="An option of the first provider (repeatable)."),
        click.option("--threads", type=int, default=None, callback=positive("threads"), help="Intra-op threads."),
        click.option("--strict", is_flag=True, help="Fail instead of warning when onnxruntime falls back to another provider."),
        click.option("--opt-level", type=click.Choice(["disable", "basic", "extended", "all"]), default="all",
                     show_default=True, help="onnxruntime graph optimization level."),
        trusted_key_option,
        expect_option,
        click.option("--no-self-check", "no_self_check", is_flag=True,
                     help="Skip the variant's golden-vector check at load (it refuses a variant this device "
                          "computes differently)."),
        click.option("--max-memory", default="2G", show_default=True, callback=_memory_size, metavar="SIZE",
                     help="Models of any image size (diffusers VAEs): a call estimated to need more runs one image "
                          "at a time, or in overlapping tiles (e.g. 1G, 512M)."),
        click.option("--tile", type=click.IntRange(1), default=None, metavar="PIXELS",
                     help="Models of any image size: decode and encode in overlapping tiles of this many pixels a "
                          "side (a multiple of the model's factor), whatever the memory."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _memory_size(ctx, param, value):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    try:
        n = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        n = -1
    if not 64 << 20 <= n <= 1 << 50:
        raise click.BadParameter(f"{value!r}: a size such as 2G or 512M, at least 64M")
    return int(n)


def load_runtime(kw: dict):
    rt = _load_runtime(kw)
    rt.max_memory, rt.tile = kw.pop("max_memory"), kw.pop("tile")
    return rt


def _load_runtime(kw: dict):
    from vae_edge.runtime import VAERuntime
    from vae_edge.runtime.providers import parse_provider_options

    return VAERuntime.load(
        kw.pop("bundle"), variant=kw.pop("variant"), providers=kw.pop("providers") or None,
        threads=kw.pop("threads"), provider_options=parse_provider_options(kw.pop("provider_options")),
        strict=kw.pop("strict"), opt_level=kw.pop("opt_level"), warn=warner(),
        trusted_key=kw.pop("trusted_key"), self_check=not kw.pop("no_self_check"), expect=kw.pop("expect"),
    )


def with_runtime(f):
    """Build the VAERuntime from the shared options and pass it as `rt`."""
    @runtime_options
    @functools.wraps(f)
    def wrapper(**kw):
        rt = load_runtime(kw)
        return f(rt=rt, **kw)
    return wrapper


def _labels_for(rt, labels, digit):
    if not rt.conditional:
        return None
    if digit is not None:
        return digit
    if labels is None:
        raise VaeEdgeError("this model is conditional: pass --digit, or use dataset slices (they carry labels)")
    return labels



# --------------------------------------------------------------------------------------------
# bench / tune / pipeline
# --------------------------------------------------------------------------------------------

def _csv(kind: type):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            items = tuple(kind(v.strip()) for v in value.split(",") if v.strip())
        except ValueError as e:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of {kind.__name__}") from e
        if kind is int and any(i <= 0 for i in items):
            raise click.BadParameter(f"{value!r}: values must be positive")
        return items
    return parse


def eight_bit_likelihoods() -> tuple[str, ...]:
    """The 8-bit likelihoods (imported when used: the CLI's modules import no runtime at load)."""
    from vae_edge.runtime.mathops import EIGHT_BIT

    return EIGHT_BIT
