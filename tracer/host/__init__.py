"""Facts about the running kernel: symbols, BTF, tracepoints, headers, lockdown."""
