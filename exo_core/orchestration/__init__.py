"""The node: request lifecycle, plans, streaming, cancellation (DESIGN.md §3)."""
