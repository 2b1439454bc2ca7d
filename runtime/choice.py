"""Which variant runs here: the one module that decides (`--variant auto`, `info`, `tune`, `web`).

The order for `--variant auto`: the tuned choice for this CPU, then the variant the bundle records
for this machine's target (`quantize --target`), then the other int8 variants made for this kind
of CPU, fp32 last. Never fp16 on a CPU (it is no faster there than fp32) and never a variant made
for another target (int8-dynamic-arm64 on x86).

`vae-edge tune` writes its choice into an unsigned bundle's manifest, or, for a shipped or signed
bundle it must not change, into the user cache (keyed by the manifest's content, so unauthenticated).
Either way the record only chooses among what the bundle already holds; every field is checked
against the bundle and this machine, and a bad record is ignored with one note.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vae_edge.runtime import providers as prov
from vae_edge.runtime.bundle import tuning, user_tuning_file
from vae_edge.runtime.manifest import Manifest, Variant


def made_for_here(variant: Variant) -> bool:
    """A variant made for every target (fp32) or for one that fits this machine (x86 fits every
    x86 CPU, x86-vnni only those with VNNI)."""
    from vae_edge.runtime.sysinfo import current_targets

    return variant.target in (None, *current_targets())


def target_variant(info: Manifest) -> str | None:
    """The variant a bundle records for this machine's target (what `--variant auto` loads when
    the bundle was never tuned), or None: the most specific record first (x86-vnni before x86);
    never fp16 (bundles quantized before fp16 was kept out
    of the CPU targets may still name it)."""
    from vae_edge.runtime.sysinfo import current_targets

    for target in current_targets():  # this CPU family's record first, then its instruction set's
        record = info.targets.get(target)
        v = info.variants.get(record.variant) if record and record.variant else None
        if v is not None and not v.is_fp16 and made_for_here(v):
            return v.name
    return None


def auto_candidates(info: Manifest, providers, threads, warn, path: Path) -> tuple[list[str], object, object]:
    """The variants to try for --variant auto, best first, and the providers and threads the
    tuned choice asks for (where the caller gave none)."""
    choice = tuned_choice(info, warn) or {}
    target = target_variant(info)
    first = [v for v in (choice.get("variant"), target) if v in info.variants]
    if not first:
        name = path.name if path.name != "bundle" else path.parent.name
        warn(f"note: --variant auto: {name} was never tuned, so fp32 is used "
             "(run `vae-edge tune` to choose by speed and accuracy)")
        first = ["fp32"]
    if choice and providers is None and choice.get("provider"):
        providers = [choice["provider"]]
    if choice and threads is None and choice.get("threads"):
        threads = choice["threads"]
    rest = [name for name, v in info.variants.items() if name not in first and name != "fp32"
            and not v.is_fp16 and made_for_here(v)]
    order = list(dict.fromkeys(first + rest + ["fp32"]))
    return [v for v in order if v in info.variants], providers, threads


def choice_problem(choice: object, info: Manifest, section: str = "choice") -> str | None:
    """Why a tuning choice may not be used here, or None if it may."""
    from vae_edge.runtime.sysinfo import current_target

    if not isinstance(choice, dict):
        return f"its {section} is not a table"
    variant = choice.get("variant")
    if not isinstance(variant, str) or variant not in info.variants:
        return f"variant {str(variant)[:40]!r} is not in the bundle"
    if section == "choice" and not made_for_here(info.variants[variant]):
        return f"variant {variant} was made for {info.variants[variant].target}, not for this CPU ({current_target()})"
    if section != "choice":
        return None
    provider = choice.get("provider")
    if provider is not None and (not isinstance(provider, str) or provider not in prov.available()):
        return f"provider {str(provider)[:40]!r} is not available here"
    threads = choice.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or not 1 <= threads <= prov.max_threads()):
        return f"threads {str(threads)[:20]!r} is not between 1 and this machine's {prov.max_threads()}"
    return None


def tuned_choice(info: Manifest, warn: Callable[[str], None] | None = None, section: str | None = None) -> dict | None:
    """The checked tuning choice for this CPU ({variant, provider, threads}), or for another
    section of the record (section='web'); None when there is none or it may not be used."""
    record = tuning(info.raw)
    node = record if section is None else record.get(section)
    if not isinstance(node, dict) or "choice" not in node:
        return None
    choice = node["choice"]
    problem = choice_problem(choice, info, "choice" if section is None else section)
    if problem is None:
        return dict(choice)
    if warn is not None:
        where = "its manifest" if info.raw.get("tuning") else str(user_tuning_file(info.raw))
        warn(f"note: the tuning record in {where} is ignored: {problem}; run `vae-edge tune` again")
    return None
