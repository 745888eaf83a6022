"""Images for the checks and evaluations: one preprocessing, labelled folders, streaming."""
