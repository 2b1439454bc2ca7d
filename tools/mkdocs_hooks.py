"""MkDocs hook: the pictures the benchmarks write to benchmarks/results/ are served as results/*.png,
so the pages link to the committed files instead of copies of them."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks"


def on_files(files, config):
    for png in sorted((RESULTS / "results").glob("*.png")):
        files.append(File(f"results/{png.name}", src_dir=str(RESULTS), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
