"""`tracer bench`: the spawn workload's forks per second vs extra VMAs, through pyperf.

worker.py is the pyperf program (one per VMA count: pyperf allows one Runner
per process); run.py drives it over the VMA counts, optionally under
`tracer record`, and prints the seed's table.
"""
