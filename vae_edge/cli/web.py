"""`vae-edge web`: the browser as an edge target (a static site running the bundle with onnxruntime-web)."""

from __future__ import annotations

import click

from vae_edge.cli.base import data_dir_option, progress_log, trusted_key_option


@click.command()
@click.option("--bundle", default=None, help="Bundle folder or shipped model name (default: mlp-mnist).")
@click.option("--variant", "variants", multiple=True, default=("auto",), show_default=True,
              help="Variant(s) for the page (repeat for a selector): a name, auto (the choice of "
                   "`vae-edge tune --target web`, else fp32), or all.")
@click.option("--out", default="site", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the static site (replaced atomically).")
@data_dir_option
@click.option("--force", is_flag=True, help="Replace a site built before in --out.")
@click.option("--serve", is_flag=True, help="Then serve it on http://HOST:PORT/ until Ctrl-C.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address for --serve.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port for --serve (0: any free port).")
@trusted_key_option
def web(bundle, variants, out, data_dir, force, serve, host, port, trusted_key) -> None:
    """Build a static web page that samples, morphs and scores hand-drawn digits in the browser.

    The site runs the bundle's graphs with onnxruntime-web (WebAssembly, fetched once from npm,
    so `npm` must be installed to build). Any static host can serve it; for multi-threaded wasm
    and fine-grained timers, send the headers in OUT/_headers (COOP/COEP); --serve does.

    \b
    Example: vae-edge web --out site --serve
             vae-edge web --bundle conv-mnist --variant all --out site-conv --force
    """
    from vae_edge import web as site

    res = site.build_site(bundle, tuple(variants), out, data_dir=data_dir, force=force, trusted_key=trusted_key,
                          log=progress_log())
    click.echo(f"site: {res['out']}  ({res['bytes'] / 1e6:.1f} MB; variants {', '.join(res['variants'])}; "
               f"shown first: {res['default_variant']}, {res['why']})")
    if serve:
        server = site.serve(out, host, port)
        h, p = server.server_address[:2]
        click.echo(f"serving http://{h}:{p}/  (Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
