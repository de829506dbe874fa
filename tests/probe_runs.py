"""One spawn run under a BracketProbe built in-process, for the tests that compare program variants."""

from __future__ import annotations

__all__ = ["probe_records"]


def probe_records(config_fields: dict, vmas: int, forks: int, inspect=None, maps: list | None = None) -> tuple[list, int]:
    """Records of a BracketProbe built with `config_fields`, over one spawn run.

    inspect(probe), if given, runs once the probe is loaded (a test's look at what was loaded:
    each load is a compile, which costs a minute under emulation). maps, if given, gets the
    workload's /proc/PID/maps as it forks.
    """
    from tracer.host import headers
    from tracer.probes.bracket import BracketConfig, BracketProbe, offsets_from_btf
    from tracer.workload.spawn import SpawnWorkload

    headers.apply(headers.resolve_headers())
    records = []
    config = BracketConfig(filter_tgids=True, **offsets_from_btf(), **config_fields)
    with BracketProbe(config, on_dup=lambda ev, raw: records.append(type(ev).from_buffer_copy(raw))) as probe:
        if inspect is not None:
            inspect(probe)
        with SpawnWorkload(vmas, forks=forks, cpu=0) as work:
            pid, vmas_total = work.start()
            if maps is not None:
                with open(f"/proc/{pid}/maps") as f:
                    maps.append(f.read())
            probe.add_targets([pid])
            work.go()
            while not work.finished():
                probe.poll(50)
            work.wait(timeout=60)
        for _ in range(3):
            probe.poll(20)
        counters = probe.counters()
    assert counters["lost_ringbuf"] == 0
    return [r for r in records if r.pid == pid], vmas_total
