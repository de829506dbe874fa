"""forktrace: trace where fork() spends its time copying the maple tree (dup_mmap)."""

__version__ = "0.1.0"
