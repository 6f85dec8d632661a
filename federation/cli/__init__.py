"""cli: see docs/adr/0022-package-layout.md."""
