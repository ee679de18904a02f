"""One module per `medsuite` sub-command; each exposes `command`, a Typer-compatible function."""
