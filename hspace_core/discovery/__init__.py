"""Direction discovery (ALGORITHMS.md §1.4-1.7, §2.4-2.6, §3)."""
