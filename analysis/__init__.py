"""Pure analysis of forktrace recordings, and the recording format itself.

recording/ (format: schema, phases, reader, writer) -> frame (several
recordings, grouped) -> model/ (maple tree replay) -> report/. Nothing here
loads BPF or imports tracer/.
"""
