"""Which tuned variant a bundle may run here: the tuning record, checked before it steers anything.

`vae-edge tune` writes its choice into an unsigned bundle's manifest, or, for a shipped or signed
bundle it must not change, into the user cache (keyed by the manifest's content, so unauthenticated).
Either way the record only chooses among what the bundle already holds; every field is checked
against the bundle and this machine, and a bad record is ignored with one note.
"""

from __future__ import annotations

from collections.abc import Callable

from vae_edge.runtime import providers as prov
from vae_edge.runtime.bundle import tuning, user_tuning_file


def choice_problem(choice: object, manifest: dict, section: str = "choice") -> str | None:
    """Why a tuning choice may not be used here, or None if it may."""
    from vae_edge.runtime.sysinfo import current_target

    if not isinstance(choice, dict):
        return f"its {section} is not a table"
    variants = manifest.get("variants", {})
    variant = choice.get("variant")
    if not isinstance(variant, str) or variant not in variants:
        return f"variant {str(variant)[:40]!r} is not in the bundle"
    target = (variants[variant] or {}).get("target")
    if section == "choice" and target not in (None, current_target()):
        return f"variant {variant} was made for {target}, not for this {current_target()} CPU"
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


def tuned_choice(manifest: dict, warn: Callable[[str], None] | None = None, section: str | None = None) -> dict | None:
    """The checked tuning choice for this CPU ({variant, provider, threads}), or for another
    section of the record (section='web'); None when there is none or it may not be used."""
    record = tuning(manifest)
    node = record if section is None else record.get(section)
    if not isinstance(node, dict) or "choice" not in node:
        return None
    choice = node["choice"]
    problem = choice_problem(choice, manifest, "choice" if section is None else section)
    if problem is None:
        return dict(choice)
    if warn is not None:
        where = "its manifest" if manifest.get("tuning") else str(user_tuning_file(manifest))
        warn(f"note: the tuning record in {where} is ignored: {problem}; run `vae-edge tune` again")
    return None
