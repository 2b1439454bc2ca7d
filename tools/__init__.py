"""Tools that build environments and the docs site (not part of the installed package)."""
