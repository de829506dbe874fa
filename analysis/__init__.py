"""Pure analysis of forktrace recordings: frames, the maple tree model, attribution, reports."""
