"""The report model and its output formats."""
